"""Pytest fixture for the real LeaderWorkerSet controller on the sandbox control plane.

``lws_controller`` (one per session) installs the LWS CRDs into the sandbox, starts the
controller built by ``make lws`` (``qwen_operator.sandbox.lws``, LWS v0.9.0) with its
webhooks served on 127.0.0.1 and registered by URL, waits until it serves, and stops it
-- webhook configurations first -- at the end of the session. Its log goes to a temp
file: start-up errors quote its tail, :func:`wait_lws` appends the tail to a timed-out
wait, and teardown prints it.

A missing binary fails the test with the command that builds it -- never a silent skip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ..sandbox.cluster import Sandbox
from ..sandbox.lws import LWSController, LWSError
from .wait import wait_for

__all__ = ["lws_controller"]


@pytest.fixture(scope="session")
def lws_controller(
    sandbox: Sandbox, kube_api: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LWSController]:
    """The running controller (CRDs installed, webhooks registered) against the guarded sandbox."""
    del kube_api  # only for its guard: the sandbox's kubeconfig was checked before we use it
    controller = LWSController(kubeconfig=sandbox.kubeconfig, workdir=tmp_path_factory.mktemp("lws"))
    try:
        failure = ""
        controller.start()
    except LWSError as exc:
        failure = str(exc)
    if failure:
        pytest.fail(failure, pytrace=False)
    try:
        yield controller
    finally:
        controller.stop()
        print(f"--- LWS controller log tail ({controller.log_path}) ---\n{controller.tail(60)}")


def wait_lws(controller: LWSController, what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """:func:`wait_for`, failing with the controller's log tail (and whether it still runs)."""
    try:
        return wait_for(what, check, timeout=timeout)
    except AssertionError as exc:
        state = "running" if controller.alive() else "EXITED"
        raise AssertionError(
            f"{exc}\n--- LWS controller ({state}) log tail ({controller.log_path}) ---\n{controller.tail()}"
        ) from None
