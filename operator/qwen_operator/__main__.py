"""``python -m qwen_operator`` = ``qwenctl``."""

from .cli import main

raise SystemExit(main())
