"""``qwenctl``: the command-line front door.

Each concern owns its subcommands in its own ``cli`` module exposing
``register(subparsers)``; this file only assembles them, so adding a command never
touches another concern's code. A subcommand's handler returns the process exit code.
Expected failures print ``error: ...`` (no traceback) and exit 2. Anything else a
subcommand raises is still one line (``error: <kind>: <message>``, exit 1) unless
``QWENCTL_DEBUG=1`` asks for the traceback: a user never has to read a stack to act.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

#: Modules contributing subcommands, in ``--help`` order.
COMMAND_MODULES = (
    "qwen_operator.sandbox.cli",  # sandbox up/down/status/env/demo
    "qwen_operator.controller.cli",  # operator run
    "qwen_operator.planner.cli",  # plan, render
    "qwen_operator.sim.cli",  # simulate, sim-server
    "qwen_operator.modelsync.cli",  # model push/pull/diff/...
    "qwen_operator.router.cli",  # router (the data plane)
    "qwen_operator.nodeagent.cli",  # node-agent (pre-staging DaemonSet)
)


class UserError(Exception):
    """An expected failure: printed as ``error: <message>``, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwenctl",
        description="Elastic serving of Qwen models on Kubernetes (qwen-operator).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that concern has no commands yet
                continue
            raise
        register: Callable[[Any], None] = module.register
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: one line, the traceback only on request
        if os.environ.get("QWENCTL_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        print(
            f"error: {type(exc).__name__}: {first or 'unexpected failure'} (QWENCTL_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    # run through the package module, so `UserError` is the one the subcommands raise
    from qwen_operator.cli import main as package_main

    raise SystemExit(package_main())
