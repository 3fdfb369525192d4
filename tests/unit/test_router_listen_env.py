"""``QWEN_ROUTER_LISTEN``: the sandbox's listen-address override of the rendered ``--host``/``--port``."""

from __future__ import annotations

import argparse

import pytest

from qwen_operator.cli import UserError
from qwen_operator.router.cli import LISTEN_ENV, options_from_args, register


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["router", "--namespace", "llm", "--deployment", "chat", *argv])


def test_rendered_port_is_used_without_the_override() -> None:
    opts = options_from_args(parse("--port", "8080"), env={})
    assert (opts.host, opts.port) == ("0.0.0.0", 8080)


def test_the_override_replaces_host_and_port() -> None:
    opts = options_from_args(parse("--port", "8080"), env={LISTEN_ENV: "127.0.0.1:0"})
    assert (opts.host, opts.port) == ("127.0.0.1", 0)
    opts = options_from_args(parse(), env={LISTEN_ENV: "[::1]:9000"})
    assert (opts.host, opts.port) == ("::1", 9000)


@pytest.mark.parametrize("value", ["8080", ":8080", "127.0.0.1:http", "127.0.0.1:70000"])
def test_a_bad_override_names_the_variable(value: str) -> None:
    with pytest.raises(UserError, match=LISTEN_ENV):
        options_from_args(parse(), env={LISTEN_ENV: value})
