"""Thinking on vs off, per replica (SIMULATED): reply tokens and requests/s within the SLO.

    .venv/bin/python bench/thinking_bench.py [--model Qwen/Qwen3-14B] [--quantization fp8] \
        [--gpus L40S,A100-80GB] [--prompt 512] [--answer 128] [--slo 1.2]

Two steps, both through the project's own simulation code (no GPU):

1. **Reply tokens**: one chat request per setting to a simulated server
   (:class:`qwen_operator.sim.server.SimulatedTGI`) configured as a pod with
   ``spec.runtime.reasoning`` enabled (the model's template: it thinks) and disabled (our
   non-thinking template), a ``--prompt``-token question and a ``--answer``-token answer
   (the spec's default typicalPromptTokens / typicalOutputTokens). The server's ``usage``
   says how many tokens were generated; ``x-total-time`` how long the reply took on an idle
   replica (virtual seconds). Thinking adds ``DEFAULT_REASONING_TOKENS`` (sim/chat.py, the
   planner's TYPICAL_REASONING_TOKENS: a planning figure with its sources documented there).
2. **Requests/s within the SLO**: :func:`qwen_operator.sim.capacity.calibrate_pool` runs the
   same continuous-batching engine under Poisson arrivals of requests that size and bisects
   the rate whose P95 time to first token stays within ``--slo`` (scaling.p95LatencySeconds).

The ratio (off / on) is the capacity thinking costs for that traffic; every figure is SIMULATED.
"""

from __future__ import annotations

import argparse
import json
from urllib.request import Request as HTTPRequest
from urllib.request import urlopen

from qwen_operator.capacity.model import ReplicaModel
from qwen_operator.sim.capacity import calibrate_pool, smallest_fit
from qwen_operator.sim.chat import DEFAULT_REASONING_TOKENS, ChatOptions
from qwen_operator.sim.server import SimulatedTGI, serve
from qwen_operator.sim.trace import TraceRow
from qwen_operator.testing.background import BackgroundLoop

TIME_SCALE = 2000.0  # virtual seconds per wall second: a 1,000-token reply in well under a second


def one_reply(replica: ReplicaModel, thinking: bool, prompt_tokens: int, answer: int) -> tuple[int, float]:
    """(generated tokens, virtual seconds) of one chat request to an idle simulated server."""
    bg = BackgroundLoop()
    try:
        sim = SimulatedTGI(replica, TIME_SCALE, 0.0, answer, chat=ChatOptions("tgi", thinking_default=thinking))
        served = bg.run(serve(sim))
        text = "x" * (4 * prompt_tokens - 16)  # ~4 characters per token, less the chat template's overhead
        body = json.dumps({"messages": [{"role": "user", "content": text}]}).encode()
        req = HTTPRequest(served.base_url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
        with urlopen(req, timeout=120) as resp:
            out = json.loads(resp.read())
            seconds = int(resp.headers["x-total-time"]) / 1000
        bg.run(served.close())
        return int(out["usage"]["completion_tokens"]), seconds
    finally:
        bg.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="Qwen/Qwen3-14B")
    ap.add_argument("--quantization", default="fp8")
    ap.add_argument("--gpus", default="L40S,A100-80GB")
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens (scaling.typicalPromptTokens)")
    ap.add_argument("--answer", type=int, default=128, help="visible answer tokens (scaling.typicalOutputTokens)")
    ap.add_argument("--slo", type=float, default=1.2, help="P95 time to first token, s (scaling.p95LatencySeconds)")
    args = ap.parse_args()
    print(
        f"SIMULATED: {args.model} {args.quantization}, {args.prompt}-token prompts, {args.answer}-token answers, "
        f"thinking = {DEFAULT_REASONING_TOKENS} reasoning tokens, SLO P95 TTFT {args.slo:g} s"
    )
    print(f"{'GPU':<10} {'thinking':<9} {'reply tok':>9} {'reply s':>8} {'req/s@SLO':>10} {'off/on':>7}")
    for gpu in args.gpus.split(","):
        replica = smallest_fit(args.model, gpu, args.quantization)
        if replica is None:
            print(f"{gpu:<10} (the model does not fit)")
            continue
        rates: dict[bool, float] = {}
        for thinking in (False, True):
            tokens, seconds = one_reply(replica, thinking, args.prompt, args.answer)
            profile = calibrate_pool(replica, [TraceRow(0.0, args.prompt, tokens)], args.slo)
            rates[thinking] = profile.rate_at_slo
            ratio = f"{rates[False] / rates[True]:.1f}x" if thinking and rates[True] > 0 else ""
            label = "on" if thinking else "off"
            print(f"{gpu:<10} {label:<9} {tokens:>9} {seconds:>8.2f} {profile.rate_at_slo:>10.2f} {ratio:>7}")


if __name__ == "__main__":
    main()
