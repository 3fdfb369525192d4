"""Continuous-batching engine of one simulated TGI replica, in virtual time.

The simulated TGI server (wall clock) and the discrete-event autoscaling simulator (a day
of traffic in seconds) both drive this same engine, so that what the autoscaler sees in a
simulation is what the HTTP server reports in the closed-loop tests. It is pure and
event-driven: it never loops per token in Python; it jumps over runs of decode steps in
one go ("chunks") and stops only where something can change.

Scheduling follows TGI's router (``backends/v3``):

* ``submit``: if the requests in flight (waiting + running) already reach
  ``max_concurrent_requests`` the request is rejected (HTTP 429, ``err="overloaded"``);
  prompts over ``max_input_tokens`` or totals over ``max_total_tokens`` are rejected as
  ``validation`` (HTTP 422).
* Admission is FIFO and stops at the first request that does not fit the free KV cache
  (TGI reserves prompt + max_new_tokens up front) or the prefill token budget.
* ``chunked_prefill=True`` (TGI 3's default where the attention backend supports it):
  every forward pass may take new requests; their prompt tokens (up to
  ``max_batch_prefill_tokens`` minus the running batch, a long prompt split over several
  passes) run in the same forward as the running batch's decode step.
* ``chunked_prefill=False`` (TGI 2, and backends without chunking): with a running batch,
  new requests are admitted only when the queue holds ``waiting_served_ratio x batch
  size`` entries or ``max_waiting_tokens`` decode steps have passed since the last
  prefill, and the running batch pauses during that prefill.
* Prefill yields each new request's first token; every decode step one more token per
  running request; a request leaves the batch (and frees its KV) after its last token.

Time semantics: operations (a prefill, or one decode step) are atomic; ``advance(t)``
executes every operation that *starts* before ``t``, so the engine's internal clock may
end slightly after ``t`` (an operation in flight). Requests finishing after ``t`` are kept
and returned by a later ``advance``. Within a chunk of decode steps the step time is taken
at the chunk's mid-point context (exact while the step is memory-bound, where it is
linear in context); chunks are cut so context grows at most ``_CHUNK_GROWTH`` in one.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

from ..capacity.model import TGI_MAX_WAITING_TOKENS, TGI_WAITING_SERVED_RATIO, ReplicaModel

OK = "ok"
OVERLOADED = "overloaded"
VALIDATION = "validation"
PENDING = "pending"

_CHUNK_GROWTH = 0.05  # max relative growth of the batch context inside one decode chunk
_INF = math.inf


@dataclass(slots=True, eq=False)
class Request:
    """One generation request. The caller sets the first four fields; the engine the rest."""

    arrival: float
    prompt_tokens: int
    output_tokens: int
    tag: object = None  # anything the caller wants back (trace row, asyncio future, ...)
    status: str = PENDING  # ok | overloaded | validation | pending
    start: float = math.nan  # prefill start: queue time = start - arrival
    first_token: float = math.nan  # end of its prefill (time to first token = first_token - arrival)
    finish: float = math.nan  # last token produced
    _end_step: int = field(default=0, repr=False)

    @property
    def queue_time(self) -> float:
        return self.start - self.arrival

    @property
    def duration(self) -> float:
        """End-to-end latency (what ``tgi_request_duration`` observes)."""
        return self.finish - self.arrival

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    def token_time(self, index: int) -> float:
        """Time the ``index``-th output token (0-based) was produced (for streaming)."""
        if self.output_tokens <= 1 or index <= 0:
            return self.first_token
        frac = min(index, self.output_tokens - 1) / (self.output_tokens - 1)
        return self.first_token + frac * (self.finish - self.first_token)


class ReplicaEngine:
    """One TGI replica's scheduler and GPU, simulated in virtual seconds.

    Typical use by a discrete-event simulator::

        eng = ReplicaEngine(ReplicaModel.build("Qwen3-14B", "A10G", 1, "fp8"), start_time=t0)
        eng.advance(req.arrival)        # (optional; submit advances to the arrival itself)
        accepted = eng.submit(req)      # False: rejected, req.status says why
        done = eng.advance(t)           # requests finished at or before t, finish times exact
        eng.queue_size, eng.batch_size, eng.next_event_time()
    """

    def __init__(
        self,
        model: ReplicaModel,
        start_time: float = 0.0,
        max_waiting_tokens: int = TGI_MAX_WAITING_TOKENS,
        waiting_served_ratio: float = TGI_WAITING_SERVED_RATIO,
        chunked_prefill: bool = True,
    ) -> None:
        self.model = model
        self.chunked_prefill = chunked_prefill
        self.max_waiting_tokens = max_waiting_tokens
        self.waiting_served_ratio = waiting_served_ratio
        self.kv_capacity = model.kv_capacity_tokens
        self.prefill_budget = max(model.max_batch_prefill_tokens, model.max_input_tokens)
        self._coef = model.decode_coefficients()
        self._t = start_time  # operations have been executed up to here
        self._queue: deque[Request] = deque()
        self._running: list[tuple[int, int, Request]] = []  # heap of (end_step, seq, request)
        self._seq = 0
        self._step = 0  # decode steps executed so far
        self._since_prefill = 0  # TGI's "waiting_tokens"
        self._ctx = 0  # tokens in the KV cache across the running batch
        self._reserved = 0  # KV tokens reserved (prompt + output of each running request)
        self._done: list[tuple[float, int, Request]] = []  # finished, not yet returned
        self._partial: Request | None = None  # chunked prefill in progress (admitted, KV reserved)
        self._partial_done = 0  # its prompt tokens already prefilled
        self._last_finish_at = -_INF
        self._last_finish_count = 0
        self.rejected = 0
        self.rejected_validation = 0
        self.completed = 0
        self.busy_seconds = 0.0
        self.operations = 0  # forwards or decode chunks executed (a cost measure, not tokens)

    # --- observable state --------------------------------------------------------------
    @property
    def now(self) -> float:
        """Time up to which the engine has executed (may be inside the last operation)."""
        return self._t

    @property
    def queue_size(self) -> int:
        """Requests waiting for admission (``tgi_queue_size``)."""
        return len(self._queue)

    @property
    def batch_size(self) -> int:
        """Requests in the running batch (``tgi_batch_current_size``), a part-prefilled one included."""
        return len(self._running) + (self._partial is not None)

    @property
    def in_flight(self) -> int:
        """Requests accepted and not yet returned (what max_concurrent_requests limits)."""
        return len(self._queue) + self.batch_size + len(self._done)

    def generated_tokens(self, req: Request, at: float | None = None) -> int:
        """Output tokens ``req`` has produced by time ``at`` (default: the engine's clock).

        For streaming. Decode progress is known per committed chunk, so a token may show
        up to one decode step early; the first and the last token are exact.
        """
        at = self._t if at is None else at
        if math.isnan(req.first_token) or req.first_token > at:
            return 0
        if req.status == OK and req.finish <= at:
            return req.output_tokens
        return max(1, min(req.output_tokens - 1, req.output_tokens - (req._end_step - self._step)))

    @property
    def kv_tokens_reserved(self) -> int:
        return self._reserved

    @property
    def idle(self) -> bool:
        return not self._queue and not self._running and not self._done and self._partial is None

    # --- driving -----------------------------------------------------------------------
    def submit(self, req: Request) -> bool:
        """Hand ``req`` to the replica at ``req.arrival``; False (and ``req.status``) if rejected.

        The engine first executes every operation starting before the arrival, so a request
        never joins a batch formed before it arrived. Finished requests found on the way are
        kept for the next :meth:`advance`.
        """
        self._run(req.arrival)
        m = self.model
        if (
            req.prompt_tokens > m.max_input_tokens
            or req.prompt_tokens + req.output_tokens > m.max_total_tokens
            or req.prompt_tokens < 1
            or req.output_tokens < 1
        ):
            req.status = VALIDATION
            self.rejected_validation += 1
            return False
        in_flight = len(self._queue) + self.batch_size
        if self._last_finish_at > req.arrival:  # finished inside the operation still in flight
            in_flight += self._last_finish_count
        if in_flight >= m.max_concurrent_requests:
            req.status = OVERLOADED
            self.rejected += 1
            return False
        self._queue.append(req)
        return True

    def advance(self, to_time: float) -> list[Request]:
        """Run the replica up to ``to_time``; return requests finished at or before it (by finish time)."""
        self._run(to_time)
        out: list[Request] = []
        while self._done and self._done[0][0] <= to_time:
            out.append(heapq.heappop(self._done)[2])
        return out

    def next_event_time(self) -> float:
        """Earliest time the engine's state can change without new arrivals (``inf`` when idle).

        It is the end of the next operation (or of the one in flight), or the finish time
        of a request already computed; ``advance`` to it may return nothing (a chunk
        boundary), but never skips a completion.
        """
        candidates = [self._done[0][0]] if self._done else []
        plan = self._plan(_INF)
        if plan is not None:
            candidates.append(self._t + plan[1] * (plan[2] if plan[0] == "decode" else 1))
        return min(candidates) if candidates else _INF

    # --- internals ---------------------------------------------------------------------
    def _fits(self, req: Request, reserved: int, batch: int) -> bool:
        max_size = self.model.max_batch_size
        if max_size is not None and batch >= max_size:
            return False
        return reserved + req.prompt_tokens + req.output_tokens <= self.kv_capacity

    def _admissible(self) -> list[Request]:
        """Legacy (unchunked) admission: what TGI's queue hands out now."""
        if not self._queue:
            return []
        n_run = len(self._running)
        if n_run and self._since_prefill < self.max_waiting_tokens:
            if len(self._queue) < int(n_run * self.waiting_served_ratio):
                return []
        picked: list[Request] = []
        prefill = 0
        reserved = self._reserved
        for req in self._queue:
            if prefill + req.prompt_tokens > self.prefill_budget or not self._fits(req, reserved, n_run + len(picked)):
                break
            picked.append(req)
            prefill += req.prompt_tokens
            reserved += req.prompt_tokens + req.output_tokens
        return picked

    def _chunks(self) -> list[tuple[Request, int, int]]:
        """Chunked admission: (request, chunk tokens, already prefilled) for the next forward."""
        budget = self.model.max_batch_prefill_tokens - len(self._running)
        out: list[tuple[Request, int, int]] = []
        if budget <= 0:
            return out
        if self._partial is not None:
            c = min(self._partial.prompt_tokens - self._partial_done, budget)
            out.append((self._partial, c, self._partial_done))
            budget -= c
        reserved, batch = self._reserved, self.batch_size
        for req in self._queue:
            if budget <= 0 or not self._fits(req, reserved, batch):
                break
            c = min(req.prompt_tokens, budget)
            out.append((req, c, 0))
            budget -= c
            reserved += req.prompt_tokens + req.output_tokens
            batch += 1
        return out

    def _plan(self, to_time: float) -> tuple[str, float, int] | None:
        """The next operation at ``self._t``: (kind, seconds per operation, count).

        kind is "prefill" (unchunked prefill of ``count`` requests), "mixed" (one chunked
        forward) or "decode" (``count`` decode steps).
        """
        b = len(self._running)
        if self.chunked_prefill:
            chunks = self._chunks()
            if chunks:
                prefill = [(c, o) for _, c, o in chunks]
                return ("mixed", self.model.forward_seconds(b, self._ctx, prefill), len(chunks))
        else:
            picked = self._admissible()
            if picked:
                return ("prefill", self.model.prefill_seconds([r.prompt_tokens for r in picked]), len(picked))
        if not b:
            return None
        k = self._running[0][0] - self._step  # steps until the first completion
        if not self.chunked_prefill and self._queue and self._fits(self._queue[0], self._reserved, b):
            # admission waits only for TGI's max_waiting_tokens (or for more arrivals, which
            # come at to_time): stop the chunk where the router would admit
            k = min(k, max(1, self.max_waiting_tokens - self._since_prefill))
        k = max(1, min(k, int(_CHUNK_GROWTH * self._ctx / b) + 1))
        m0, m1, c_b, c_ctx, o0, o_b = self._coef
        ctx = self._ctx + b * (k - 1) / 2.0
        step = max(m0 + m1 * ctx, c_b * b + c_ctx * ctx) + o0 + o_b * b
        if to_time < _INF:
            k = max(1, min(k, math.ceil((to_time - self._t) / step)))
        return ("decode", step, k)

    def _run(self, to_time: float) -> None:
        if self._t < to_time and not self._running and not self._queue and self._partial is None:
            if to_time < _INF:
                self._t = to_time  # idle
            return
        while self._t < to_time:
            plan = self._plan(to_time)
            if plan is None:
                if to_time < _INF:
                    self._t = to_time  # idle: nothing to do until the next arrival
                return
            kind, seconds, n = plan
            self.operations += 1
            if kind == "decode":
                self._decode(n, seconds)
            elif kind == "mixed":
                self._mixed(n, seconds)
            else:
                self._prefill(n, seconds)

    def _join(self, req: Request, start: float, end: float) -> None:
        """``req`` got its first token at ``end``: it joins the running batch (or is done)."""
        req.first_token = end
        if req.output_tokens == 1:
            self._finish(req, end)
            return
        self._ctx += req.prompt_tokens + 1
        req._end_step = self._step + req.output_tokens - 1
        self._seq += 1
        heapq.heappush(self._running, (req._end_step, self._seq, req))

    def _take(self, start: float) -> Request:
        req = self._queue.popleft()
        req.start = start
        self._reserved += req.prompt_tokens + req.output_tokens
        return req

    def _prefill(self, n: int, seconds: float) -> None:
        start, end = self._t, self._t + seconds
        for _ in range(n):
            self._join(self._take(start), start, end)
        self._t = end
        self.busy_seconds += seconds
        self._since_prefill = 1

    def _mixed(self, n: int, seconds: float) -> None:
        start, end = self._t, self._t + seconds
        chunks = self._chunks()[:n]
        if self._running:
            self._decode(1, seconds)  # the running batch's decode step shares this forward
        else:
            self._t = end
            self.busy_seconds += seconds
        for req, c, done in chunks:
            if req is self._partial:
                self._partial = None
            else:
                self._take(start)
            if done + c < req.prompt_tokens:
                self._partial, self._partial_done = req, done + c
            else:
                self._join(req, start, end)

    def _decode(self, k: int, step: float) -> None:
        b = len(self._running)
        self._step += k
        self._ctx += b * k
        self._since_prefill += k
        self._t += step * k
        self.busy_seconds += step * k
        while self._running and self._running[0][0] <= self._step:
            req = heapq.heappop(self._running)[2]
            self._ctx -= req.prompt_tokens + req.output_tokens
            self._finish(req, self._t)

    def _finish(self, req: Request, at: float) -> None:
        req.finish = at
        req.status = OK
        self._reserved -= req.prompt_tokens + req.output_tokens
        self.completed += 1
        if at == self._last_finish_at:
            self._last_finish_count += 1
        else:
            self._last_finish_at, self._last_finish_count = at, 1
        self._seq += 1
        heapq.heappush(self._done, (at, self._seq, req))
