"""Which server pod gets the next request: the router's one routing algorithm (pure).

Why it exists: on mixed GPU pools the replicas differ several-fold in how much traffic
they carry within the TTFT SLO, prompts differ 100x in length, and replicas cache the KV
of prefixes they have seen. A uniform spread (what a Kubernetes Service gives) or plain
least-outstanding overloads the slow pool long before the fleet's planned capacity. This
module decides, per request, from what the router knows without asking the pods: the
requests it has in flight per endpoint, the prompt tokens still waiting for their first
byte, and per pool the planner's requests/s within the SLO and the replica model's prefill
speed (published by the operator in ``status.pools``). The real router process
(:mod:`qwen_operator.router`) and the simulator (:mod:`qwen_operator.sim.fleet`) both call
it, so every simulated routing figure is this code's.

The rules, in order (see :meth:`Picker.pick`):

1. **Canary rule**: canary endpoints receive ``canary_percent`` of picks, spread evenly by
   a counter (not at random, so a small percentage is exact over few requests), and
   nothing at 0. They never receive traffic otherwise. The router adds a canary pod as an
   endpoint only once its version passed the operator's smoke test
   (:mod:`qwen_operator.router.discovery`), so an untested canary gets no pick at all.
2. **Eligibility**: excluded endpoints (already tried by a retry) and endpoints at their
   pool's ``max_concurrency`` are skipped; none left: ``None`` (the caller holds the
   request rather than sending it where the engine would answer 429).
3. **Size-aware**: where a pool's prefill speed is known, an endpoint whose estimated time
   to first token (prompt tokens still waiting for their first byte plus this prompt, over
   the prefill speed) exceeds the SLO is skipped while another endpoint's estimate fits; if
   none fits, the one with the smallest estimate is taken (the least harm).
4. **Affinity** (prefix / session): consistent hashing on a ring with virtual nodes
   (in proportion to the pool's weight, hashed with BLAKE2 so two router replicas agree)
   with bounded load: the key's endpoint is used unless its weighted load would exceed
   ``load_bound`` x the fleet's mean weighted load (rounded up to whole requests, so an
   idle fleet always honours the key), then the next on the ring, else rule 5.
5. **Capacity-weighted least outstanding**: the lowest ``(outstanding + 1) / weight``;
   ties go to the larger weight, then fewer waiting prompt tokens, then round-robin.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

#: Header a client sets to keep a conversation on one replica (its KV cache holds the history).
SESSION_HEADER = "x-session-id"
#: Virtual nodes of the heaviest pool's endpoints on the hash ring; lighter pools get fewer,
#: in proportion to their weight (at least one), so sticky keys land in proportion to capacity.
VIRTUAL_NODES = 100
#: Characters of the leading prompt (or of the first messages) hashed into a prefix key:
#: ~256 tokens, enough to tell conversations apart while a growing chat keeps its key.
AFFINITY_PREFIX_CHARS = 1024
#: Distinct eligible endpoints tried along the ring before falling back to the weighted choice.
AFFINITY_PROBES = 2
#: Characters per token for :func:`estimate_prompt_tokens` (English text with BPE tokenizers).
CHARS_PER_TOKEN = 4
#: Weight of an endpoint whose pool has capacity 0 (cannot meet the SLO): last resort only.
_LAST_RESORT_WEIGHT = 1e-6


@dataclass(frozen=True)
class PoolCapacity:
    """What the router knows about one GPU pool (the operator publishes it in ``status.pools``)."""

    weight: float  # requests/s one replica sustains within the TTFT SLO (the planner's number)
    prefill_tokens_per_second: float = 0.0  # one replica's prefill speed, for size-aware TTFT estimates (0 = unknown)
    max_concurrency: int = 0  # engine's max concurrent requests (0 = unbounded)


@dataclass(eq=False)
class Endpoint:
    """One Ready server pod. ``outstanding`` and ``pending_prefill_tokens`` are kept by the Picker."""

    name: str  # pod name
    pool: str  # GPU type (catalog name, e.g. "L40S")
    version: str = ""  # model version the pod serves
    canary: bool = False
    outstanding: int = 0  # requests sent, response not finished
    pending_prefill_tokens: int = 0  # prompt tokens sent whose first response byte has not come back


def _hash64(text: str) -> int:
    """A hash stable across processes (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


class Picker:
    """Chooses an endpoint per request; the caller reports in-flight changes via acquire/release.

    Typical use by a router::

        picker.set_pools({"L40S": PoolCapacity(2.7, 9000.0, 128), ...})
        picker.add(Endpoint("chat-l40s-0", "L40S", version="v2"))
        ep = picker.pick(key=affinity_key(body, headers), prompt_tokens=estimate_prompt_tokens(body))
        if ep is None: hold the request and try again later
        picker.acquire(ep, prompt_tokens)
        ... first response byte: picker.prefilled(ep, prompt_tokens)
        ... response done (or failed): picker.release(ep)  (prompt_tokens= if no first byte came)
    """

    def __init__(
        self,
        *,
        affinity: bool = True,
        load_bound: float = 1.25,
        ttft_slo_seconds: float = 0.0,
        canary_percent: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not (load_bound >= 1.0 and math.isfinite(load_bound)):
            raise ValueError(f"load_bound must be a number >= 1, got {load_bound}")
        if not (0.0 <= canary_percent <= 100.0):
            raise ValueError(f"canary_percent must be between 0 and 100, got {canary_percent}")
        if not (ttft_slo_seconds >= 0.0 and math.isfinite(ttft_slo_seconds)):
            raise ValueError(f"ttft_slo_seconds must be >= 0 (0 = size-aware routing off), got {ttft_slo_seconds}")
        self.affinity = affinity
        self.load_bound = load_bound
        self.ttft_slo_seconds = ttft_slo_seconds
        self.canary_percent = canary_percent
        self._pools: dict[str, PoolCapacity] = {}
        self._eps: dict[str, Endpoint] = {}
        self._ring: list[tuple[int, str]] | None = None  # (hash, endpoint name), sorted; None = rebuild
        self._ring_keys: list[int] = []
        self._rr = seed  # round-robin among exact ties
        self._picks = 0  # picks that returned an endpoint while a canary could take one
        self._canary_picks = 0

    # --- membership ----------------------------------------------------------------------
    @property
    def endpoints(self) -> Mapping[str, Endpoint]:
        """The endpoints by name (read-only view)."""
        return MappingProxyType(self._eps)

    @property
    def pools(self) -> Mapping[str, PoolCapacity]:
        return MappingProxyType(self._pools)

    def set_pools(self, pools: Mapping[str, PoolCapacity]) -> None:
        """Replace the per-pool capacities (the ring is rebuilt: weights set the virtual nodes)."""
        for name, cap in pools.items():
            if not (cap.weight >= 0.0 and math.isfinite(cap.weight)):
                raise ValueError(f"pool {name}: weight must be a finite number >= 0, got {cap.weight}")
        new = dict(pools)
        if new != self._pools:
            self._pools = new
            self._ring = None

    def add(self, ep: Endpoint) -> Endpoint:
        """Add a Ready endpoint; an endpoint of the same name is updated in place (its counts
        kept, so requests in flight are still released on the object the caller holds).
        Returns the stored endpoint."""
        old = self._eps.get(ep.name)
        if old is None:
            self._eps[ep.name] = ep
            self._ring = None
            return ep
        if (old.pool, old.canary) != (ep.pool, ep.canary):
            self._ring = None
        old.pool, old.version, old.canary = ep.pool, ep.version, ep.canary
        return old

    def remove(self, name: str) -> None:
        """Stop sending to ``name`` (requests in flight there still finish and are released)."""
        if self._eps.pop(name, None) is not None:
            self._ring = None

    # --- in-flight accounting ------------------------------------------------------------
    def acquire(self, ep: Endpoint, prompt_tokens: int = 0) -> None:
        """A request was sent to ``ep`` (``prompt_tokens``: its prompt, waiting for prefill)."""
        ep.outstanding += 1
        ep.pending_prefill_tokens += max(0, prompt_tokens)

    def prefilled(self, ep: Endpoint, prompt_tokens: int) -> None:
        """The first response byte of a request with ``prompt_tokens`` came back: its prefill is done."""
        ep.pending_prefill_tokens = max(0, ep.pending_prefill_tokens - max(0, prompt_tokens))

    def release(self, ep: Endpoint, prompt_tokens: int = 0) -> None:
        """A request to ``ep`` finished or failed; ``prompt_tokens``: its prompt if :meth:`prefilled`
        was never called for it (no first byte came back)."""
        ep.outstanding = max(0, ep.outstanding - 1)
        if prompt_tokens:
            self.prefilled(ep, prompt_tokens)

    # --- the decision --------------------------------------------------------------------
    def weight(self, ep: Endpoint) -> float:
        """Requests/s within the SLO of ``ep``'s pool. A pool not (yet) published gets the
        smallest published weight (1 when none is), so a pod is usable before the operator
        reports its pool; a pool of capacity 0 is a last resort."""
        cap = self._pools.get(ep.pool)
        if cap is None:
            known = [c.weight for c in self._pools.values() if c.weight > 0]
            return min(known) if known else 1.0
        return cap.weight if cap.weight > 0 else _LAST_RESORT_WEIGHT

    def estimated_ttft(self, ep: Endpoint, prompt_tokens: int) -> float:
        """Seconds until ``ep`` would finish prefilling a new prompt: the prompt tokens it still
        has to prefill plus this one, over its pool's prefill speed (NaN when unknown)."""
        cap = self._pools.get(ep.pool)
        if cap is None or cap.prefill_tokens_per_second <= 0:
            return math.nan
        return (ep.pending_prefill_tokens + prompt_tokens) / cap.prefill_tokens_per_second

    def pick(self, *, key: str | None = None, prompt_tokens: int = 0, exclude: Collection[str] = ()) -> Endpoint | None:
        """The endpoint for the next request, or None when every eligible one is at its
        concurrency bound (or there is none): the caller holds the request. It does not
        count the request in flight: call :meth:`acquire` once it is sent."""
        want_canary = False
        canaries: list[Endpoint] = []
        if self.canary_percent > 0:
            # only picks a canary could have taken count: a canary that appears (or frees up)
            # after N picks gets its share from then on, never a catch-up burst of N x percent
            canaries = self._eligible(True, exclude)
            due = self.canary_percent * (self._picks + 1) / 100.0
            want_canary = bool(canaries) and self._canary_picks + 1 <= due + 1e-9
        chosen: Endpoint | None = None
        if want_canary:
            chosen = self._weighted(self._size_fit(canaries, prompt_tokens))
        if chosen is not None:
            self._canary_picks += 1
        else:
            stable = self._eligible(False, exclude)
            if not stable:
                return None
            fit = self._size_fit(stable, prompt_tokens)
            if self.affinity and key is not None:
                chosen = self._sticky(key, fit)
            if chosen is None:
                chosen = self._weighted(fit)
        if canaries:
            self._picks += 1
        return chosen

    def _eligible(self, canary: bool, exclude: Collection[str]) -> list[Endpoint]:
        out = []
        for ep in self._eps.values():
            if ep.canary != canary or ep.name in exclude:
                continue
            cap = self._pools.get(ep.pool)
            if cap is not None and cap.max_concurrency > 0 and ep.outstanding >= cap.max_concurrency:
                continue
            out.append(ep)
        return out

    def _size_fit(self, eps: list[Endpoint], prompt_tokens: int) -> list[Endpoint]:
        """Rule 3: drop endpoints whose estimated TTFT breaks the SLO while another fits."""
        slo = self.ttft_slo_seconds
        if slo <= 0 or prompt_tokens <= 0:
            return eps
        est = [(self.estimated_ttft(ep, prompt_tokens), ep) for ep in eps]
        fits = [ep for t, ep in est if math.isnan(t) or t <= slo]
        if fits:
            return fits
        best = min(t for t, _ in est)
        return [ep for t, ep in est if t == best]

    def _weighted(self, eps: list[Endpoint]) -> Endpoint:
        """Rule 5: capacity-weighted least outstanding; ties: larger weight, fewer waiting
        prompt tokens, then round-robin in name order."""
        best: tuple[float, float, int] | None = None
        tied: list[Endpoint] = []
        for ep in eps:
            w = self.weight(ep)
            rank = ((ep.outstanding + 1) / w, -w, ep.pending_prefill_tokens)
            if best is None or rank < best:
                best, tied = rank, [ep]
            elif rank == best:
                tied.append(ep)
        if len(tied) == 1:
            return tied[0]
        tied.sort(key=lambda e: e.name)
        self._rr += 1
        return tied[self._rr % len(tied)]

    def _build_ring(self) -> list[tuple[int, str]]:
        stable = [ep for ep in self._eps.values() if not ep.canary]
        top = max((self.weight(ep) for ep in stable), default=1.0)
        ring = []
        for ep in stable:
            n = max(1, round(VIRTUAL_NODES * self.weight(ep) / top))
            ring += [(_hash64(f"{ep.name}#{i}"), ep.name) for i in range(n)]
        ring.sort()
        return ring

    def ring_owner(self, key: str) -> str | None:
        """The endpoint ``key`` hashes to on the ring, load aside (None when empty)."""
        for name in self._walk(key):
            return name
        return None

    def _walk(self, key: str) -> Iterable[str]:
        """Distinct endpoint names clockwise from ``key``'s point on the ring."""
        if self._ring is None:
            self._ring = self._build_ring()
            self._ring_keys = [h for h, _ in self._ring]
        ring = self._ring
        if not ring:
            return
        start = bisect.bisect_left(self._ring_keys, _hash64(key))
        seen: set[str] = set()
        for i in range(len(ring)):
            name = ring[(start + i) % len(ring)][1]
            if name not in seen:
                seen.add(name)
                yield name

    def _sticky(self, key: str, eps: list[Endpoint]) -> Endpoint | None:
        """Rule 4: the key's endpoint on the ring, or the next, while within the load bound."""
        allowed = {ep.name: ep for ep in eps}
        stable = [ep for ep in self._eps.values() if not ep.canary]
        total_w = sum(self.weight(ep) for ep in stable)
        # consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018), weighted:
        # after placement an endpoint may hold ceil(c x (in flight + 1) x its share of the weight)
        share = self.load_bound * (sum(ep.outstanding for ep in stable) + 1) / total_w
        probes = 0
        for name in self._walk(key):
            ep = allowed.get(name)
            if ep is None:
                continue
            if ep.outstanding + 1 <= math.ceil(share * self.weight(ep) - 1e-9):
                return ep
            probes += 1
            if probes >= AFFINITY_PROBES:
                break
        return None


# --- what the router reads from a request ------------------------------------------------
def _text(content: Any) -> str:
    """Text of an OpenAI message ``content`` (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(p.get("text", "")) if isinstance(p, Mapping) else _text(p) for p in content)
    return ""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        for k, v in headers.items():
            if k.lower() == name:
                return v
    return value


def _prompt_text(prompt: Any) -> str:
    """``prompt`` of /v1/completions (a string, a list of strings or of token ids) or TGI's ``inputs``."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        if prompt and all(isinstance(p, int) for p in prompt):
            return json.dumps(prompt)
        return "".join(p if isinstance(p, str) else json.dumps(p) for p in prompt)
    return ""


def affinity_key(body: Mapping[str, Any] | None, headers: Mapping[str, str]) -> str | None:
    """The key that keeps related requests on one replica (whose KV cache holds their prefix).

    In order: the ``x-session-id`` header; the OpenAI ``user`` field; a hash of the first
    messages (the system message and the first user message: constant over a conversation
    whose history grows); a hash of the leading ``AFFINITY_PREFIX_CHARS`` of ``prompt`` /
    ``inputs``; else None (no affinity, the weighted choice).
    """
    session = _header(headers, SESSION_HEADER)
    if session:
        return f"session:{session}"
    if not isinstance(body, Mapping):
        return None
    user = body.get("user")
    if isinstance(user, str) and user:
        return f"user:{user}"
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        head: list[str] = []
        for msg in messages:
            if not isinstance(msg, Mapping):
                continue
            role = msg.get("role")
            if role == "system" and not head:
                head.append("system:" + _text(msg.get("content")))
            elif role == "user":
                head.append("user:" + _text(msg.get("content")))
                break
        text = "\n".join(head)[:AFFINITY_PREFIX_CHARS]
        if text:
            return "prefix:" + hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()
    prompt = _prompt_text(body.get("prompt", body.get("inputs")))[:AFFINITY_PREFIX_CHARS]
    if prompt:
        return "prefix:" + hashlib.blake2b(prompt.encode("utf-8"), digest_size=12).hexdigest()
    return None


def estimate_prompt_tokens(body: Mapping[str, Any] | None) -> int:
    """Prompt tokens of a request, estimated as characters / 4 (no tokenizer in the router):
    the messages' contents, ``prompt`` (/v1/completions) or ``inputs`` (TGI)."""
    if not isinstance(body, Mapping):
        return 0
    chars = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        chars += sum(len(_text(m.get("content"))) for m in messages if isinstance(m, Mapping))
    prompt = body.get("prompt", body.get("inputs"))
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return len(prompt) + math.ceil(chars / CHARS_PER_TOKEN)  # token ids: exact
    chars += len(_prompt_text(prompt))
    return math.ceil(chars / CHARS_PER_TOKEN)
