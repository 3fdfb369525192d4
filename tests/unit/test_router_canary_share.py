"""The canary rule over a router's lifetime: a canary that appears after the router has
served for a while gets its percentage from then on, never a catch-up burst.

Why: the counter compared canary picks with ``percent x all picks since start``; a router
that had served 100 requests before a 20% canary appeared sent it the next 25 in a row
(100%), and after a day of traffic a fresh, not yet smoke-tested canary would have taken
every request for hours."""

from __future__ import annotations

from qwen_operator.router.picking import Endpoint, Picker, PoolCapacity


def _picker(percent: float) -> Picker:
    p = Picker(affinity=False, canary_percent=percent)
    p.set_pools({"A": PoolCapacity(1.0)})
    p.add(Endpoint("s1", "A"))
    p.add(Endpoint("s2", "A"))
    return p


def _canary_flags(p: Picker, n: int) -> list[bool]:
    out = []
    for _ in range(n):
        ep = p.pick()
        assert ep is not None
        out.append(ep.canary)
    return out


def test_a_late_canary_gets_its_share_from_its_arrival_not_a_catch_up_burst() -> None:
    p = _picker(20.0)
    assert not any(_canary_flags(p, 100))  # no canary yet: every pick is stable
    p.add(Endpoint("c1", "A", version="v2", canary=True))
    flags = _canary_flags(p, 100)
    assert sum(flags) == 20
    assert flags[:5] == [False, False, False, False, True]  # spread, starting from its arrival
    assert max(len(run) for run in "".join("c" if f else "s" for f in flags).split("s")) == 1


def test_a_canary_that_leaves_and_a_new_one_that_comes_keep_the_share() -> None:
    p = _picker(10.0)
    p.add(Endpoint("c1", "A", version="v2", canary=True))
    assert sum(_canary_flags(p, 50)) == 5
    p.remove("c1")
    assert not any(_canary_flags(p, 200))
    p.add(Endpoint("c2", "A", version="v3", canary=True))
    assert sum(_canary_flags(p, 50)) == 5
