"""What the router's TTFT histogram observes per response (router/proxy.py ``_ttft``): the real time
to first byte for streamed answers; for a non-streamed TGI answer, whose first byte arrives with its
last token, the time in front of the engine's work (held, hops, TGI's queue), not the reply's length."""

from __future__ import annotations

import pytest

from qwen_operator.router.proxy import _ttft


def test_streamed_answer_is_the_time_to_first_byte() -> None:
    headers = {"Content-Type": "text/event-stream", "x-total-time": "4000", "x-queue-time": "100"}
    assert _ttft(0.35, headers) == pytest.approx(0.35)


def test_non_streamed_answer_drops_the_engines_generation_time() -> None:
    # 5.0 s end to end: 4.5 s inside TGI of which 0.3 s queued -> 4.2 s generating; 0.5 s held/hops
    headers = {"Content-Type": "application/json", "x-total-time": "4500", "x-queue-time": "300"}
    assert _ttft(5.0, headers) == pytest.approx(0.8)


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},  # not TGI (or an error the router answered): as measured
        {"x-total-time": "abc", "x-queue-time": "1"},
        {"x-total-time": "100", "x-queue-time": "200"},  # inconsistent: not trusted
    ],
)
def test_without_usable_engine_timings_the_elapsed_time_counts(headers: dict[str, str]) -> None:
    assert _ttft(2.0, headers) == pytest.approx(2.0)
