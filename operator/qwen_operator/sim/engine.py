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
* Prefix caching (TGI 3 and vLLM both keep the KV of finished requests and reuse it for a
  later prompt with the same leading tokens: vLLM hashes 16-token blocks and evicts free
  cached blocks LRU; TGI 3 keeps them in a radix trie, LRU over unreferenced leaves). A
  request may carry ``prefix_key`` (e.g. its chat session) and ``prefix_tokens``, how many
  leading tokens of its prompt an earlier request with that key already had. When the
  request is admitted and this replica still caches that key, the cached part (whole
  blocks of ``prefix_block_tokens``, never the prompt's last token, whose logits are
  needed) is not prefilled: the prompt's chunks start after it and attend to it. A
  finished keyed request leaves its prompt + reply cached under its key. The cache lives
  in the KV memory running requests do not hold: admission never waits for it (cached
  blocks are free blocks), and when a request is admitted the least recently used
  entries are evicted until cache + reservations fit ``kv_capacity``. Requests without a
  key never touch it, so the engine behaves exactly as without prefix caching.

Time semantics: operations (a prefill, or one decode step) are atomic; ``advance(t)``
executes every operation that *starts* before ``t``, so the engine's internal clock may
end slightly after ``t`` (an operation in flight). Requests finishing after ``t`` are kept
and returned by a later ``advance``. Within a chunk of decode steps the step time is taken
at the chunk's mid-point context (exact while the step is memory-bound, where it is
linear in context); chunks are cut so context grows at most ``_CHUNK_GROWTH`` in one.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from ..capacity.model import TGI_MAX_WAITING_TOKENS, TGI_WAITING_SERVED_RATIO, ReplicaModel

OK = "ok"
OVERLOADED = "overloaded"
VALIDATION = "validation"
PENDING = "pending"

_CHUNK_GROWTH = 0.05  # max relative growth of the batch context inside one decode chunk
#: Granularity of a prefix-cache hit: vLLM's default KV block (``block_size`` 16); only whole
#: blocks are reused. (TGI 3's radix trie with flashinfer matches per token: slightly more.)
PREFIX_BLOCK_TOKENS = 16
_INF = math.inf


@dataclass(slots=True, eq=False)
class Request:
    """One generation request. The caller sets the first four fields (and the prefix pair,
    for prefix caching); the engine the rest."""

    arrival: float
    prompt_tokens: int
    output_tokens: int
    tag: object = None  # anything the caller wants back (trace row, asyncio future, ...)
    status: str = PENDING  # ok | overloaded | validation | pending
    start: float = math.nan  # prefill start: queue time = start - arrival
    first_token: float = math.nan  # end of its prefill (time to first token = first_token - arrival)
    finish: float = math.nan  # last token produced
    prefix_key: str | None = None  # what its cached prefix is filed under (a chat session), None: no caching
    prefix_tokens: int = 0  # leading prompt tokens an earlier request with this key already had
    cached_tokens: int = 0  # set by the engine: prompt tokens found in the prefix cache (not prefilled)
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
        prefix_block_tokens: int = PREFIX_BLOCK_TOKENS,
    ) -> None:
        if prefix_block_tokens < 1:
            raise ValueError(f"prefix_block_tokens must be >= 1, got {prefix_block_tokens}")
        self.model = model
        self.prefix_block_tokens = prefix_block_tokens
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
        self._cache: OrderedDict[str, int] = OrderedDict()  # prefix key -> cached tokens, LRU first
        self._cached = 0  # tokens in the prefix cache
        self.prefix_hits = 0  # admitted keyed requests that found part of their prompt cached
        self.prefix_misses = 0  # admitted keyed requests that found nothing (not cached, evicted)
        self.cached_prompt_tokens = 0  # prompt tokens not prefilled thanks to the cache
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
    def prefix_cache_tokens(self) -> int:
        """Tokens of KV kept for finished requests' prefixes (free memory, evicted LRU on demand)."""
        return self._cached

    def cached_prefix(self, key: str) -> int:
        """Tokens this replica caches under ``key`` (0 when none)."""
        return self._cache.get(key, 0)

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

    def _hit(self, req: Request, taken: set[str] | None = None) -> int:
        """Prompt tokens of ``req`` the cache would spare it if admitted now (no side effect):
        the cached part of its shared prefix, in whole blocks, leaving its last token to
        prefill. ``taken``: keys another request of the same forward already claims."""
        key = req.prefix_key
        if key is None or req.prefix_tokens <= 0 or (taken is not None and key in taken):
            return 0
        usable = min(self._cache.get(key, 0), req.prefix_tokens, req.prompt_tokens - 1)
        return max(0, usable - usable % self.prefix_block_tokens)

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
        taken: set[str] = set()
        for req in self._queue:
            new = req.prompt_tokens - self._hit(req, taken)
            if prefill + new > self.prefill_budget or not self._fits(req, reserved, n_run + len(picked)):
                break
            picked.append(req)
            if req.prefix_key is not None:
                taken.add(req.prefix_key)
            prefill += new
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
        taken: set[str] = set()
        for req in self._queue:
            if budget <= 0 or not self._fits(req, reserved, batch):
                break
            hit = self._hit(req, taken)
            if req.prefix_key is not None:
                taken.add(req.prefix_key)
            c = min(req.prompt_tokens - hit, budget)
            out.append((req, c, hit))
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
                hits = self._hits(picked)
                if not any(hits):
                    return ("prefill", self.model.prefill_seconds([r.prompt_tokens for r in picked]), len(picked))
                rest = [(r.prompt_tokens - h, h) for r, h in zip(picked, hits, strict=True)]
                return ("prefill", self.model.forward_seconds(prefill=rest), len(picked))
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
        step = max(self.model.decode_weight_seconds(b) + m1 * ctx, c_b * b + c_ctx * ctx) + o0 + o_b * b
        if to_time < _INF:
            k = max(1, min(k, math.ceil((to_time - self._t) / step)))
        return ("decode", step, k)

    def _hits(self, picked: list[Request]) -> list[int]:
        taken: set[str] = set()
        out = []
        for req in picked:
            out.append(self._hit(req, taken))
            if req.prefix_key is not None:
                taken.add(req.prefix_key)
        return out

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

    def _take(self, start: float, hit: int = 0) -> Request:
        req = self._queue.popleft()
        req.start = start
        self._reserved += req.prompt_tokens + req.output_tokens
        if req.prefix_key is not None:
            self._claim(req, hit)
        self._evict()
        return req

    def _claim(self, req: Request, hit: int) -> None:
        """``req`` is admitted with ``hit`` prompt tokens from the cache: its key's entry now
        belongs to the request (it is in use, not free)."""
        assert req.prefix_key is not None
        held = self._cache.pop(req.prefix_key, None)
        if held is not None:
            self._cached -= held
        req.cached_tokens = hit
        if hit:
            self.prefix_hits += 1
            self.cached_prompt_tokens += hit
        elif req.prefix_tokens > 0:
            self.prefix_misses += 1

    def _evict(self) -> None:
        """Least recently used entries go until the cache fits beside the reservations."""
        while self._cache and self._cached + self._reserved > self.kv_capacity:
            self._cached -= self._cache.popitem(last=False)[1]

    def _prefill(self, n: int, seconds: float) -> None:
        start, end = self._t, self._t + seconds
        for hit in self._hits(list(itertools.islice(self._queue, n))):
            self._join(self._take(start, hit), start, end)
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
                self._take(start, done)
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
        if req.prefix_key is not None:
            self._keep(req.prefix_key, req.prompt_tokens + req.output_tokens)
        self.completed += 1
        if at == self._last_finish_at:
            self._last_finish_count += 1
        else:
            self._last_finish_at, self._last_finish_count = at, 1
        self._seq += 1
        heapq.heappush(self._done, (at, self._seq, req))

    def _keep(self, key: str, tokens: int) -> None:
        """A finished keyed request's prompt + reply stay cached under ``key`` (most recently
        used), in whole blocks. Its reservation was just released, so it always fits."""
        tokens -= tokens % self.prefix_block_tokens
        old = self._cache.pop(key, None)
        if old is not None:
            self._cached -= old
        if tokens > 0:
            self._cache[key] = tokens
            self._cached += tokens
        self._evict()
