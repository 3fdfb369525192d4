"""Leader election on a Lease (controller/leader.py) against an in-memory Lease store with the
API server's optimistic concurrency (a write with a stale resourceVersion is a 409), on a fake
clock: who may take the Lease when, who must step down, and what the CLI accepts."""

from __future__ import annotations

import argparse
import asyncio
import copy
import datetime as dt
from typing import Any

import pytest

from qwen_operator.cli import UserError
from qwen_operator.controller.cli import leader_settings
from qwen_operator.controller.leader import LeaderElector, LeaseConflictError, LeaseSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> dt.datetime:
        return dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=self.now)

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


class Store:
    """One Lease with resourceVersion checks, as the API server keeps it."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0
        self.writes: list[str] = []  # holderIdentity of every successful write
        self.down = False

    async def get(self) -> dict[str, Any] | None:
        if self.down:
            raise ConnectionError("API server unreachable")
        return copy.deepcopy(self.lease)

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.down:
            raise ConnectionError("API server unreachable")
        if self.lease is not None:
            raise LeaseConflictError("exists")
        return self._store(body)

    async def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.down:
            raise ConnectionError("API server unreachable")
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise LeaseConflictError("stale resourceVersion")
        return self._store(body)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.rv)
        self.writes.append(self.lease["spec"]["holderIdentity"])
        return copy.deepcopy(self.lease)

    @property
    def holder(self) -> str | None:
        return None if self.lease is None else self.lease["spec"]["holderIdentity"]


SETTINGS = {"namespace": "qwen-operator", "lease_duration": 10.0, "renew_deadline": 7.0, "retry_period": 2.0}


def elector(store: Store, clock: Clock, identity: str, lost: list[str] | None = None) -> LeaderElector:
    return LeaderElector(
        store,
        LeaseSettings(identity=identity, **SETTINGS),  # type: ignore[arg-type]
        clock=clock,
        wall=clock.wall,
        sleep=clock.sleep,
        on_lost=(lost if lost is not None else []).append,
    )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_first_candidate_creates_the_lease_and_the_second_waits() -> None:
    store, clock = Store(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert run(a.try_acquire_or_renew()) and a.is_leader
    assert store.lease is not None
    spec = store.lease["spec"]
    assert spec["holderIdentity"] == "a" and spec["leaseDurationSeconds"] == 10 and spec["leaseTransitions"] == 0
    for _ in range(30):  # a renews every retry period for a minute: b never gets in
        clock.now += 2.0
        assert run(a.try_acquire_or_renew())
        assert not run(b.try_acquire_or_renew()) and not b.is_leader
    assert set(store.writes) == {"a"} and b.holder == "a"


def test_a_dead_leader_is_replaced_one_lease_duration_after_its_last_renewal_was_seen() -> None:
    store, clock = Store(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    run(a.try_acquire_or_renew())
    clock.now += 1.0
    assert not run(b.try_acquire_or_renew())  # b sees a's record now: the lease runs from here
    seen = clock.now
    clock.now = seen + 9.9  # a is gone (no renewals), but the lease has not run out for b
    assert not run(b.try_acquire_or_renew())
    clock.now = seen + 10.1
    assert run(b.try_acquire_or_renew()) and b.is_leader
    assert store.lease is not None
    assert store.lease["spec"]["holderIdentity"] == "b" and store.lease["spec"]["leaseTransitions"] == 1


def test_a_standby_counts_from_when_it_saw_the_lease_change_not_from_renew_time() -> None:
    """A fresh standby does not trust the holder's clock: even a renewTime far in the past gives
    the holder one whole lease duration from the standby's first look."""
    store, clock = Store(), Clock()
    run(elector(store, clock, "a").try_acquire_or_renew())
    assert store.lease is not None
    store.lease["spec"]["renewTime"] = "2001-01-01T00:00:00.000000Z"
    b = elector(store, clock, "b")
    assert not run(b.try_acquire_or_renew())
    clock.now += 9.0
    assert not run(b.try_acquire_or_renew())
    clock.now += 1.5
    assert run(b.try_acquire_or_renew())


def test_acquire_polls_until_the_lease_runs_out() -> None:
    store, clock = Store(), Clock()
    run(elector(store, clock, "a").try_acquire_or_renew())
    b = elector(store, clock, "b")
    start = clock.now
    assert run(b.acquire())
    # a never renewed: b took the Lease once it had seen it unchanged for the lease duration,
    # looking again right at expiry rather than a whole retry period later
    assert 10.0 <= clock.now - start <= 10.0 + 2.0 * 1.2


def test_release_hands_over_at_the_next_look() -> None:
    store, clock = Store(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    run(a.try_acquire_or_renew())
    assert not run(b.try_acquire_or_renew())
    assert run(a.release()) and not a.is_leader
    assert store.lease is not None
    assert store.lease["spec"]["holderIdentity"] == "" and store.lease["spec"]["leaseDurationSeconds"] == 1
    clock.now += 0.5
    assert run(b.try_acquire_or_renew())
    assert not run(a.release())  # a no longer holds it: releasing again writes nothing
    assert store.holder == "b"


def test_a_renewal_that_landed_late_neither_costs_the_lease_nor_blocks_the_release() -> None:
    """A renewal whose response was lost (timeout) did change the Lease: the next renewal and the
    release carry a stale resourceVersion (409); both re-read and go on instead of giving up."""
    store, clock = Store(), Clock()
    a = elector(store, clock, "a")
    run(a.try_acquire_or_renew())
    assert store.lease is not None
    store._store(copy.deepcopy(store.lease))  # a's own write the client never saw
    clock.now += 2.0
    assert run(a.try_acquire_or_renew()) and a.is_leader
    store._store(copy.deepcopy(store.lease))  # again, right before a stops
    assert run(a.release())
    assert store.holder == ""


def test_two_candidates_racing_for_a_free_lease_cannot_both_win() -> None:
    store, clock = Store(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    run(a.try_acquire_or_renew())
    run(a.release())
    clock.now += 1.0

    async def both() -> list[bool]:
        return list(await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew()))

    # both read the same free Lease; the second write carries a stale resourceVersion (409)
    store_get = store.get
    reads: list[dict[str, Any] | None] = []

    async def get_same() -> dict[str, Any] | None:
        if not reads:
            reads.append(await store_get())
        return copy.deepcopy(reads[0])

    store.get = get_same  # type: ignore[method-assign]
    assert sorted(run(both())) == [False, True]
    assert [a.is_leader, b.is_leader].count(True) == 1


def test_leader_that_cannot_renew_steps_down_before_a_standby_may_take_over() -> None:
    store, clock = Store(), Clock()
    lost: list[str] = []
    a = elector(store, clock, "a", lost)
    run(a.try_acquire_or_renew())
    renewed = a.renewed_at
    store.down = True
    reason = run(a.hold())
    assert lost == [reason] and "renew deadline" in reason and not a.is_leader
    # stepped down at the renew deadline: before the lease duration a standby waits
    assert 7.0 <= clock.now - renewed < 10.0


def test_leader_whose_lease_was_taken_steps_down_at_its_next_renewal() -> None:
    store, clock = Store(), Clock()
    lost: list[str] = []
    a = elector(store, clock, "a", lost)
    run(a.try_acquire_or_renew())
    assert store.lease is not None
    store._store({**store.lease, "spec": {**store.lease["spec"], "holderIdentity": "intruder"}})
    reason = run(a.hold())
    assert "intruder" in reason and lost == [reason] and not a.is_leader
    assert store.holder == "intruder"  # a wrote nothing over it


class EnoughError(Exception):
    pass


def test_leader_survives_a_short_api_outage() -> None:
    store, clock = Store(), Clock()
    lost: list[str] = []
    a = elector(store, clock, "a", lost)
    run(a.try_acquire_or_renew())
    sleeps = 0

    async def sleep(seconds: float) -> None:
        nonlocal sleeps
        sleeps += 1
        store.down = sleeps in (1, 2)  # the first two renewals (4 s) fail, then the API is back
        if sleeps > 6:
            raise EnoughError
        await clock.sleep(seconds)

    a.sleep = sleep
    with pytest.raises(EnoughError):
        run(a.hold())
    assert lost == [] and a.is_leader and store.holder == "a"
    assert store.writes == ["a"] * 5  # acquired, then renewals 3-6


def test_readiness_is_leader_or_a_standby_that_reaches_the_lease() -> None:
    store, clock = Store(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert not b.ready()  # never read the Lease yet
    run(a.try_acquire_or_renew())
    run(b.try_acquire_or_renew())
    assert a.ready() and b.ready()
    clock.now += 11.0  # neither renewed nor looked for longer than the lease duration
    assert not a.ready() and not b.ready()


def _args(**over: Any) -> argparse.Namespace:
    base: dict[str, Any] = {
        "leader_elect_namespace": "qwen-operator",
        "leader_elect_lease_name": None,
        "leader_elect_identity": None,
        "leader_elect_lease_duration": None,
        "leader_elect_renew_deadline": None,
        "leader_elect_retry_period": None,
    }
    return argparse.Namespace(**{**base, **over})


def test_cli_defaults_and_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "qwen-operator-7d9f-abcde")
    s = leader_settings(_args())
    assert (s.lease_duration, s.renew_deadline, s.retry_period) == (10.0, 7.0, 2.0)
    assert s.name == "qwen-operator-leader" and s.namespace == "qwen-operator"
    assert s.identity.startswith("qwen-operator-7d9f-abcde_")
    assert leader_settings(_args()).identity != s.identity  # a restarted process is a new candidate


@pytest.mark.parametrize(
    ("over", "flag"),
    [
        ({"leader_elect_renew_deadline": 12.0}, "--leader-elect-lease-duration"),
        ({"leader_elect_retry_period": 6.5}, "--leader-elect-renew-deadline"),
        ({"leader_elect_retry_period": 0.0}, "--leader-elect-retry-period"),
        ({"leader_elect_namespace": None}, "--leader-elect-namespace"),
    ],
)
def test_cli_rejects_unsafe_timings_naming_the_flag(
    monkeypatch: pytest.MonkeyPatch, over: dict[str, Any], flag: str
) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setattr("qwen_operator.controller.cli._in_cluster_namespace", lambda: None)
    with pytest.raises(UserError, match=flag):
        leader_settings(_args(**over))
