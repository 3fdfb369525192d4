"""Pytest fixture for a real Hugging Face Hub-compatible server (Olah, offline, on 127.0.0.1).

``hub_mirror`` starts one Olah process per session serving the local git repositories
under its ``mirrors`` directory as Hub repositories (see
:mod:`qwen_operator.modelsync.hubmirror`); tests create repositories with
:func:`~qwen_operator.modelsync.hubmirror.make_repo` under unique names and read the
server's own access log to count downloads. A missing install fails the test with the
command that installs it -- never a silent skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qwen_operator.modelsync.hubmirror import HubMirror, MissingMirrorError

__all__ = ["hub_mirror"]


@pytest.fixture(scope="session")
def hub_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubMirror]:
    missing = ""
    try:
        mirror = HubMirror(tmp_path_factory.mktemp("hub")).start()
    except MissingMirrorError as exc:
        missing = str(exc)
    if missing:
        pytest.fail(missing, pytrace=False)
    try:
        yield mirror
    finally:
        mirror.stop()
