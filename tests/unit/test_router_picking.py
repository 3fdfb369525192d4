"""The router's routing algorithm (pure): weighted least outstanding, size-aware skipping,
affinity with bounded load, concurrency bounds, the canary rule and request keys."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from qwen_operator.router.picking import (
    AFFINITY_PREFIX_CHARS,
    Endpoint,
    Picker,
    PoolCapacity,
    affinity_key,
    estimate_prompt_tokens,
)


def picker(pools: dict[str, PoolCapacity], eps: list[tuple[str, str]], **kw: Any) -> Picker:
    p = Picker(**kw)
    p.set_pools(pools)
    for name, pool in eps:
        p.add(Endpoint(name, pool))
    return p


def send(p: Picker, n: int, **kw: Any) -> Counter[str]:
    """Pick and acquire ``n`` requests that never finish; count where they went."""
    seen: Counter[str] = Counter()
    for _ in range(n):
        ep = p.pick(**kw)
        assert ep is not None
        p.acquire(ep)
        seen[ep.name] += 1
    return seen


@pytest.mark.parametrize(
    ("weights", "n", "expected"),
    [
        ({"L40S": 3.0, "A10G": 1.0}, 400, {"L40S": 300, "A10G": 100}),
        ({"L40S": 2.0, "A10G": 2.0}, 100, {"L40S": 50, "A10G": 50}),
        ({"A100-80GB": 5.0, "L40S": 2.0, "A10G": 1.0}, 80, {"A100-80GB": 50, "L40S": 20, "A10G": 10}),
    ],
)
def test_in_flight_requests_follow_the_pool_weights(
    weights: dict[str, float], n: int, expected: dict[str, int]
) -> None:
    p = picker({k: PoolCapacity(w) for k, w in weights.items()}, [(k, k) for k in weights], affinity=False)
    assert dict(send(p, n)) == expected


def test_plain_least_outstanding_when_every_weight_is_equal() -> None:
    p = picker({"A": PoolCapacity(1.0), "B": PoolCapacity(1.0)}, [("a", "A"), ("b", "B")])
    p.acquire(p.endpoints["a"])
    p.acquire(p.endpoints["a"])
    assert send(p, 2) == {"b": 2}  # b catches up first


def test_releases_make_an_endpoint_preferred_again() -> None:
    p = picker({"A": PoolCapacity(1.0)}, [("a", "A"), ("b", "A")])
    a, b = p.endpoints["a"], p.endpoints["b"]
    for ep in (a, a, b, b):
        p.acquire(ep)
    p.release(a)
    assert p.pick() is a
    p.release(b)
    p.release(b)
    assert p.pick() is b


def test_exact_ties_are_round_robin_in_name_order() -> None:
    p = picker({"A": PoolCapacity(1.0)}, [("c", "A"), ("a", "A"), ("b", "A")])
    picks = [p.pick() for _ in range(6)]  # nothing acquired: always a tie
    names = [ep.name for ep in picks if ep is not None]
    assert sorted(names[:3]) == ["a", "b", "c"]
    assert names[3:] == names[:3]


def test_equal_load_goes_to_the_larger_weight() -> None:
    p = picker({"big": PoolCapacity(2.0), "small": PoolCapacity(1.0)}, [("s", "small"), ("g", "big")])
    p.acquire(p.endpoints["g"])  # (1+1)/2 == (0+1)/1
    assert [p.pick().name for _ in range(3)] == ["g", "g", "g"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("prompt", "fast_pending", "expected", "why"),
    [
        (500, 0, "slow", "both fit: the less loaded (weighted) slow pool"),
        (2000, 0, "fast", "slow prefill 2.0 s breaks the 1 s SLO while fast fits"),
        (20000, 0, "fast", "nothing fits: the smallest estimate"),
        (2000, 9000, "fast", "neither fits (fast 1.1 s with its queue, slow 2.0 s): the smaller"),
        (2000, 19000, "slow", "neither fits, the fast pool's queue makes it the slower"),
        (0, 0, "slow", "unknown prompt size: weighted choice"),
    ],
)
def test_size_aware_skips_a_pool_whose_prefill_breaks_the_slo(
    prompt: int, fast_pending: int, expected: str, why: str
) -> None:
    pools = {"fast": PoolCapacity(1.0, prefill_tokens_per_second=10_000), "slow": PoolCapacity(4.0, 1_000)}
    p = picker(pools, [("fast", "fast"), ("slow", "slow")], ttft_slo_seconds=1.0, affinity=False)
    p.acquire(p.endpoints["fast"], fast_pending)
    ep = p.pick(prompt_tokens=prompt)
    assert ep is not None and ep.name == expected, why


def test_size_aware_is_off_without_an_slo_or_a_prefill_speed() -> None:
    p = picker({"fast": PoolCapacity(1.0, 10_000), "slow": PoolCapacity(4.0, 1_000)}, [("f", "fast"), ("s", "slow")])
    assert p.pick(prompt_tokens=5000).name == "s"  # type: ignore[union-attr]
    q = picker({"fast": PoolCapacity(1.0, 10_000), "slow": PoolCapacity(4.0)}, [("f", "fast"), ("s", "slow")])
    q.ttft_slo_seconds = 1.0
    assert q.pick(prompt_tokens=50_000).name == "s"  # type: ignore[union-attr]  # slow's speed unknown: it "fits"


def test_prefill_accounting_moves_with_first_bytes_and_releases() -> None:
    p = picker({"A": PoolCapacity(1.0, 1000)}, [("a", "A")])
    a = p.endpoints["a"]
    p.acquire(a, 300)
    p.acquire(a, 200)
    assert p.estimated_ttft(a, 500) == pytest.approx(1.0)
    p.prefilled(a, 300)
    p.release(a, prompt_tokens=200)  # failed before its first byte
    assert (a.outstanding, a.pending_prefill_tokens) == (1, 0)


def sessions_picker(**kw: Any) -> Picker:
    return picker({"A": PoolCapacity(1.0)}, [(f"ep{i}", "A") for i in range(4)], **kw)


def test_affinity_keeps_a_key_on_its_ring_endpoint() -> None:
    p = sessions_picker()
    owner = p.ring_owner("session:alice")
    for _ in range(3):  # nothing in flight: always within the bound
        ep = p.pick(key="session:alice")
        assert ep is not None and ep.name == owner
    keys = [f"session:{i}" for i in range(200)]
    owners = Counter(p.pick(key=k).name for k in keys)  # type: ignore[union-attr]
    assert len(owners) == 4 and min(owners.values()) > 20  # keys spread over the ring


def test_affinity_off_ignores_the_key() -> None:
    p = sessions_picker(affinity=False)
    assert len({p.pick(key="session:alice").name for _ in range(8)}) == 4  # type: ignore[union-attr]


def test_bounded_load_moves_a_hot_key_on_and_back() -> None:
    p = sessions_picker(load_bound=1.25)
    owner = p.endpoints[p.ring_owner("session:hot") or ""]
    for ep in p.endpoints.values():
        p.acquire(ep)  # everyone has 1 in flight
    p.acquire(owner)  # owner at 2: 2 + 1 > ceil(1.25 x (5 + 1) / 4) = 2
    moved = p.pick(key="session:hot")
    assert moved is not None and moved is not owner
    p.release(owner)  # owner at 1: 1 + 1 <= ceil(1.25 x (4 + 1) / 4) = 2
    assert p.pick(key="session:hot") is owner


def test_bounded_load_falls_back_to_the_weighted_choice_after_two_probes() -> None:
    p = sessions_picker(load_bound=1.0)
    first = p.ring_owner("k")
    names = list(p._walk("k"))  # ring order for this key
    for name in names[:2]:
        for _ in range(3):
            p.acquire(p.endpoints[name])
    p.acquire(p.endpoints[names[2]])  # the third on the ring is busier than the fourth
    ep = p.pick(key="k")
    assert first == names[0]
    assert ep is not None and ep.name == names[3]  # weighted least outstanding, not the ring's third


@pytest.mark.parametrize(
    ("busy", "exclude", "expected"),
    [
        ({"a": 2, "b": 2}, (), None),
        ({"a": 2, "b": 1}, (), "b"),
        ({"a": 0, "b": 1}, ("a",), "b"),
        ({"a": 0, "b": 2}, ("a",), None),
    ],
)
def test_endpoints_at_max_concurrency_or_excluded_are_skipped(
    busy: dict[str, int], exclude: tuple[str, ...], expected: str | None
) -> None:
    p = picker({"A": PoolCapacity(1.0, max_concurrency=2)}, [("a", "A"), ("b", "A")])
    for name, n in busy.items():
        for _ in range(n):
            p.acquire(p.endpoints[name])
    ep = p.pick(exclude=exclude, key="session:x")
    assert (ep.name if ep else None) == expected


def canary_picker(percent: float) -> Picker:
    p = picker({"A": PoolCapacity(1.0)}, [("s1", "A"), ("s2", "A")], canary_percent=percent)
    p.add(Endpoint("c1", "A", version="v2", canary=True))
    return p


@pytest.mark.parametrize(("percent", "canary_picks"), [(0.0, 0), (10.0, 10), (25.0, 25), (100.0, 100)])
def test_canary_gets_exactly_its_percentage(percent: float, canary_picks: int) -> None:
    p = canary_picker(percent)
    seen = [p.pick(key=f"session:{i}") for i in range(100)]
    assert sum(1 for ep in seen if ep is not None and ep.canary) == canary_picks


def test_canary_picks_are_spread_not_bunched() -> None:
    p = canary_picker(10.0)
    flags = [p.pick().canary for _ in range(30)]  # type: ignore[union-attr]
    assert [i for i, c in enumerate(flags) if c] == [9, 19, 29]


def test_canary_never_gets_traffic_by_affinity_or_fallback() -> None:
    p = canary_picker(0.0)
    for ep in list(p.endpoints.values()):
        if not ep.canary:
            p.remove(ep.name)
    assert p.pick(key="session:x") is None  # no stable endpoint: hold, never the canary


def test_unavailable_canary_gives_its_turn_to_stable() -> None:
    p = canary_picker(100.0)
    ep = p.pick(exclude=("c1",))
    assert ep is not None and not ep.canary


def test_removed_endpoint_is_never_picked_and_other_keys_keep_their_endpoint() -> None:
    p = picker({"A": PoolCapacity(1.0)}, [(f"ep{i}", "A") for i in range(5)])
    keys = [f"session:{i}" for i in range(300)]
    before = {k: p.ring_owner(k) for k in keys}
    p.remove("ep2")
    after = {k: p.ring_owner(k) for k in keys}
    assert "ep2" not in after.values()
    assert all(after[k] == before[k] for k in keys if before[k] != "ep2")
    assert all(p.pick(key=k).name != "ep2" for k in keys[:50])  # type: ignore[union-attr]
    p.remove("nope")  # unknown: no error


def test_heavier_pools_own_more_of_the_ring() -> None:
    p = picker({"big": PoolCapacity(4.0), "small": PoolCapacity(1.0)}, [("g", "big"), ("s", "small")])
    owners = Counter(p.ring_owner(f"k{i}") for i in range(2000))
    assert owners["g"] > 2.5 * owners["s"]


def test_readding_an_endpoint_keeps_its_in_flight_count() -> None:
    p = picker({"A": PoolCapacity(1.0)}, [("a", "A")])
    held = p.endpoints["a"]
    p.acquire(held)
    stored = p.add(Endpoint("a", "A", version="v2"))
    assert stored is held and held.outstanding == 1 and held.version == "v2"


def test_unknown_pool_gets_the_smallest_published_weight_and_zero_capacity_is_last_resort() -> None:
    p = picker({"A": PoolCapacity(3.0), "Z": PoolCapacity(0.0)}, [("a", "A"), ("n", "new"), ("z", "Z")])
    assert p.weight(p.endpoints["n"]) == 3.0
    assert send(p, 6)["z"] == 0


@pytest.mark.parametrize(
    "kw",
    [{"load_bound": 0.9}, {"canary_percent": 101}, {"canary_percent": -1}, {"ttft_slo_seconds": -1.0}],
)
def test_bad_settings_are_rejected_naming_the_setting(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        Picker(**kw)  # type: ignore[arg-type]


def test_negative_pool_weight_is_rejected() -> None:
    with pytest.raises(ValueError, match="weight"):
        Picker().set_pools({"A": PoolCapacity(-1.0)})


LONG = "x" * (AFFINITY_PREFIX_CHARS + 50)
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        ({"messages": CHAT, "user": "u1"}, {"X-Session-Id": "s9"}, "session:s9"),
        ({"messages": CHAT, "user": "u1"}, {"x-session-id": "s9"}, "session:s9"),
        ({"messages": CHAT, "user": "u1"}, {}, "user:u1"),
        (None, {}, None),
        ({}, {}, None),
        ({"messages": []}, {}, None),
        ({"inputs": ""}, {}, None),
    ],
)
def test_affinity_key_sources(body: dict[str, Any] | None, headers: dict[str, str], expected: str | None) -> None:
    assert affinity_key(body, headers) == expected


def test_affinity_key_of_a_growing_chat_stays_the_same() -> None:
    first = affinity_key({"messages": CHAT}, {})
    grown = [*CHAT, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}]
    later = affinity_key({"messages": grown}, {})
    parts = affinity_key({"messages": [CHAT[0], {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, {})
    other = affinity_key({"messages": [CHAT[0], {"role": "user", "content": "bye"}]}, {})
    assert first is not None and first.startswith("prefix:")
    assert first == later == parts != other


def test_affinity_key_of_prompts_hashes_the_leading_part() -> None:
    a = affinity_key({"prompt": LONG + "tail one"}, {})
    b = affinity_key({"prompt": LONG + "tail two"}, {})
    c = affinity_key({"inputs": "y" + LONG}, {})
    d = affinity_key({"prompt": [1, 2, 3]}, {})
    assert a == b != c and a is not None and d is not None and d != a


@pytest.mark.parametrize(
    ("body", "tokens"),
    [
        (None, 0),
        ({}, 0),
        ({"prompt": "abcdefgh"}, 2),
        ({"prompt": ["abcd", "efghi"]}, 3),
        ({"inputs": "a" * 400}, 100),
        ({"prompt": [5, 6, 7]}, 3),
        ({"messages": CHAT}, 3),  # "be brief" + "hi" = 10 chars
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a" * 40}]}]}, 10),
    ],
)
def test_estimate_prompt_tokens(body: dict[str, Any] | None, tokens: int) -> None:
    assert estimate_prompt_tokens(body) == tokens
