"""Prefix caching in the simulated engine, and the multi-turn chat sessions workload."""

from __future__ import annotations

import math
import random

import pytest

from qwen_operator.capacity.model import ReplicaModel
from qwen_operator.router.picking import affinity_key
from qwen_operator.sim.engine import OK, ReplicaEngine, Request
from qwen_operator.sim.fleet import Fleet
from qwen_operator.sim.trace import TraceError, TraceRow, default_trace_path, load_azure_csv
from qwen_operator.sim.workloads import SessionTrace, build_session_trace, build_sessions


@pytest.fixture(scope="module")
def l40s() -> ReplicaModel:
    return ReplicaModel.build("Qwen3-14B", "L40S", 1, "fp8")


@pytest.fixture(scope="module")
def rows() -> list[TraceRow]:
    return load_azure_csv(default_trace_path())


def drain(engine: ReplicaEngine) -> list[Request]:
    done: list[Request] = []
    while (t := engine.next_event_time()) < math.inf:
        done += engine.advance(t)
    return done


def two_turns(eng: ReplicaEngine, key: str | None) -> tuple[Request, Request]:
    """Turn 1 (1,000 in, 100 out), then turn 2 resending it plus 500 new tokens, after it ended."""
    first = Request(0.0, 1000, 100, prefix_key=key)
    eng.submit(first)
    drain(eng)
    second = Request(first.finish + 5.0, 1600, 50, prefix_key=key, prefix_tokens=1100 if key else 0)
    eng.submit(second)
    drain(eng)
    return first, second


@pytest.mark.parametrize("chunked", [True, False])
def test_cache_hit_prefills_only_the_new_tokens(l40s: ReplicaModel, chunked: bool) -> None:
    cached, plain = ReplicaEngine(l40s, chunked_prefill=chunked), ReplicaEngine(l40s, chunked_prefill=chunked)
    _, hit = two_turns(cached, "session:a")
    _, miss = two_turns(plain, None)
    assert hit.status == miss.status == OK
    assert hit.cached_tokens == 1088  # prompt + reply of turn 1 (1,100), in whole 16-token blocks
    assert miss.cached_tokens == 0
    assert hit.ttft == pytest.approx(l40s.forward_seconds(prefill=[(1600 - 1088, 1088)]))
    assert miss.ttft == pytest.approx(l40s.prefill_seconds(1600))
    assert hit.ttft < 0.5 * miss.ttft
    assert cached.prefix_hits == 1 and cached.cached_prompt_tokens == 1088
    assert cached.cached_prefix("session:a") == 1648  # turn 2's prompt + reply, kept for turn 3


def test_a_fully_cached_prompt_still_prefills_its_last_token(l40s: ReplicaModel) -> None:
    eng = ReplicaEngine(l40s, prefix_block_tokens=1)
    first = Request(0.0, 800, 10, prefix_key="k")
    eng.submit(first)
    drain(eng)
    again = Request(first.finish + 1.0, 800, 10, prefix_key="k", prefix_tokens=800)
    eng.submit(again)
    drain(eng)
    assert again.cached_tokens == 799 and again.ttft > 0


def test_other_keys_and_unshared_prompts_do_not_hit(l40s: ReplicaModel) -> None:
    eng = ReplicaEngine(l40s)
    first = Request(0.0, 1000, 100, prefix_key="session:a")
    eng.submit(first)
    drain(eng)
    other = Request(first.finish + 1.0, 1600, 50, prefix_key="session:b", prefix_tokens=1100)
    fresh = Request(first.finish + 1.0, 1600, 50, prefix_key="session:a", prefix_tokens=0)
    for req in (other, fresh):
        eng.submit(req)
    drain(eng)
    assert other.cached_tokens == fresh.cached_tokens == 0
    assert eng.prefix_misses == 1  # only `other` expected a shared prefix


def test_lru_eviction_under_kv_pressure(l40s: ReplicaModel) -> None:
    eng = ReplicaEngine(l40s)
    eng.kv_capacity = 20_000
    t = 0.0
    for key in ("a", "b", "c"):  # three finished sessions, 4,000 tokens each: 12,000 cached
        req = Request(t, 3900, 100, prefix_key=key)
        eng.submit(req)
        drain(eng)
        t = req.finish + 1.0
    assert eng.prefix_cache_tokens == 12_000
    # refresh "a": its next turn hits, ends, and is cached again as the most recent
    a2 = Request(t, 4100, 100, prefix_key="a", prefix_tokens=4000)
    eng.submit(a2)
    drain(eng)
    assert a2.cached_tokens == 4000
    t = a2.finish + 1.0
    # a long unrelated request needs 12,000 of the 20,000 tokens: cache + reservations must fit
    big = Request(t, 8000, 4000)
    eng.submit(big)
    eng.advance(t + 0.01)  # admitted, still running
    assert eng.kv_tokens_reserved == 12_000
    assert eng.prefix_cache_tokens + eng.kv_tokens_reserved <= eng.kv_capacity
    assert eng.cached_prefix("b") == 0  # least recently used: evicted first
    assert eng.cached_prefix("a") == 4192  # most recently used: kept
    drain(eng)
    b2 = Request(big.finish + 1.0, 4100, 50, prefix_key="b", prefix_tokens=4000)
    eng.submit(b2)
    drain(eng)
    assert b2.cached_tokens == 0 and eng.prefix_misses == 1


def test_no_prefix_runs_exactly_as_before(l40s: ReplicaModel) -> None:
    """Keyed requests with nothing to share change nothing; unkeyed requests never touch the cache."""
    rng = random.Random(3)
    spec = [(i * 0.05, rng.randint(50, 3000), rng.randint(1, 300)) for i in range(300)]
    runs = []
    for keyed in (False, True):
        eng = ReplicaEngine(l40s)
        reqs = [Request(t, p, o, prefix_key=f"s{i}" if keyed else None) for i, (t, p, o) in enumerate(spec)]
        for r in reqs:
            eng.submit(r)
        eng.advance(math.inf)
        runs.append([(r.status, r.start, r.first_token, r.finish) for r in reqs])
        if not keyed:
            assert eng.prefix_cache_tokens == 0 and eng.prefix_hits == eng.prefix_misses == 0
    assert runs[0] == runs[1]


def test_fleet_passes_the_prefix_to_the_replica(l40s: ReplicaModel) -> None:
    from qwen_operator.sim.capacity import PoolProfile

    prof = {"L40S": PoolProfile("L40S", 1, l40s, 1.0, 2.0, 4.0, 50.0)}
    fleet = Fleet(prof, {"L40S": 1}, "ttft", "router", 1.2)
    fleet.apply(0.0, {"L40S": 1}, instant=True)
    r = fleet.route(0.0, 1000, 20, "session:x")
    assert r is not None
    fleet.sync(60.0)
    r2 = fleet.route(60.0, 1500, 20, "session:x", 1020)
    assert r2 is r
    fleet.sync(120.0)
    assert r.engine.prefix_hits == 1 and r.engine.cached_prompt_tokens == 1008


def test_sessions_are_deterministic_per_seed_and_grow_turn_by_turn(rows: list[TraceRow]) -> None:
    a = build_sessions(rows, 0.5, 900.0, seed=7)
    b = build_sessions(rows, 0.5, 900.0, seed=7)
    c = build_sessions(rows, 0.5, 900.0, seed=8)
    assert isinstance(a, SessionTrace) and a.sessions > 100
    assert (a.arrivals, a.prompt_tokens, a.output_tokens, a.keys, a.prefix_tokens) == (
        b.arrivals,
        b.prompt_tokens,
        b.output_tokens,
        b.keys,
        b.prefix_tokens,
    )
    assert a.arrivals != c.arrivals
    assert a.arrivals == sorted(a.arrivals) and all(0.0 <= t < 900.0 for t in a.arrivals)
    by_session: dict[int, list[int]] = {}
    for i, s in enumerate(a.session):
        by_session.setdefault(s, []).append(i)
    multi = 0
    sizes = {(r.prompt_tokens, r.output_tokens) for r in rows}
    for idx in by_session.values():
        assert [a.turn[i] for i in idx] == list(range(len(idx)))
        assert len({a.keys[i] for i in idx}) == 1
        assert a.keys[idx[0]] == affinity_key(None, {"x-session-id": f"chat-7-{a.session[idx[0]]}"})
        assert a.prefix_tokens[idx[0]] == 0
        for prev, cur in zip(idx, idx[1:], strict=False):
            multi += 1
            # turn k resends turn k-1's prompt and reply, then a new user message
            assert a.prefix_tokens[cur] == a.prompt_tokens[prev] + a.output_tokens[prev]
            assert a.prompt_tokens[cur] > a.prefix_tokens[cur]
            assert a.arrivals[cur] > a.arrivals[prev] + a.output_tokens[prev] / 5.0
            assert (a.prompt_tokens[cur] - a.prefix_tokens[cur], a.output_tokens[cur]) in sizes
        assert all(a.prompt_tokens[i] <= 8192 for i in idx)
    assert multi > 100
    assert len(set(a.keys)) == a.sessions or len(set(a.keys)) == len(by_session)


def test_session_trace_follows_the_envelope_and_rejects_bad_input(rows: list[TraceRow]) -> None:
    flat = build_session_trace(rows, "flat", seed=1)
    assert flat.duration == pytest.approx(3540.0, abs=60.0)
    rate = len(flat) / flat.duration
    assert 1.0 < rate < len(rows) / rows[-1].offset  # fewer requests than the trace: sessions end early
    with pytest.raises(TraceError, match="envelope"):
        build_session_trace(rows, "nope")
    with pytest.raises(TraceError, match="session rate"):
        build_sessions(rows, 0.0, 60.0)
    with pytest.raises(TraceError, match="think"):
        build_sessions(rows, 1.0, 60.0, think_mean_seconds=0.5)


def test_cli_workload_flag_is_validated() -> None:
    from qwen_operator.cli import UserError, build_parser

    args = build_parser().parse_args(["simulate", "--workload", "chats"])
    with pytest.raises(UserError, match="--workload: 'chats' is not valid; valid: trace, sessions"):
        args.handler(args)
