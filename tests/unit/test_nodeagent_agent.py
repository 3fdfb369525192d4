"""The node agent's I/O glue: ``--cache-root`` mapping and the pull's environment, which must be the
model-pull init container's (render.workload): the credentials Secret's keys, then the operator's
registry defaults only when the resource names no Secret of its own."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client

from qwen_operator.catalog import DEFAULT_GPUS
from qwen_operator.nodeagent.agent import AgentConfig, NodeAgent, parse_cache_roots
from qwen_operator.nodeagent.plan import NodePlan, parse_resource, plan
from qwen_operator.render.workload import OperatorDefaults, model_pull_container

DEFAULT = "/var/lib/qwen-operator/models"
V1 = "sha256:" + "1" * 64
A10G = {"nvidia.com/gpu.product": DEFAULT_GPUS["A10G"].product_labels[0]}


def test_cache_roots_first_plain_dir_is_the_default_path_others_their_own() -> None:
    assert parse_cache_roots(["/mnt/node-a"], DEFAULT) == {DEFAULT: Path("/mnt/node-a")}
    roots = parse_cache_roots([DEFAULT, "/data/models/", "/srv/m=/mnt/m"], DEFAULT)
    assert roots == {DEFAULT: Path(DEFAULT), "/data/models": Path("/data/models/"), "/srv/m": Path("/mnt/m")}
    with pytest.raises(ValueError, match="NODE_PATH=DIR"):
        parse_cache_roots(["relative=/x"], DEFAULT)


class FakeCore:
    def __init__(self, secrets: dict[tuple[str, str], dict[str, str]]) -> None:
        self.secrets = secrets
        self.read: list[tuple[str, str]] = []

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        self.read.append((namespace, name))
        if (namespace, name) not in self.secrets:
            raise client.ApiException(status=404, reason="Not Found")
        data = {k: base64.b64encode(v.encode()).decode() for k, v in self.secrets[(namespace, name)].items()}
        return SimpleNamespace(data=data)


def agent(defaults: OperatorDefaults, core: FakeCore, tmp_path: Path) -> NodeAgent:
    cfg = AgentConfig(node="n", cache_roots={DEFAULT: tmp_path}, defaults=defaults, gpus=DEFAULT_GPUS)
    a = NodeAgent(cfg, client.ApiClient(client.Configuration()))
    a.core = core
    return a


def resource(**model: Any) -> Any:
    r = parse_resource(
        {
            "metadata": {"namespace": "llm", "name": "chat"},
            "spec": {"model": {"name": "Qwen/Qwen3-8B", "registry": "s3://b/p", **model}},
            "status": {"model": {"currentVersion": V1, "targetVersion": V1}},
        }
    )
    assert r is not None
    return r


def test_the_pull_gets_the_resource_secret_as_its_environment(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "the-agents-own")
    monkeypatch.setenv("OCI_TOKEN", "the-agents-own")
    defaults = OperatorDefaults(registry_endpoint_url="http://default:9000", credentials_secret="shared")
    core = FakeCore(
        {("llm", "mine"): {"AWS_ACCESS_KEY_ID": "tenant", "AWS_ENDPOINT_URL": "http://s3:1", "bad key": "x"}}
    )
    a = agent(defaults, core, tmp_path)
    res = resource(credentialsSecret="mine")
    (pull,) = plan(A10G, [res], [], {}, DEFAULT_GPUS, defaults).pulls
    env = a.pull_env(pull, res)
    assert core.read == [("llm", "mine")]
    assert env["AWS_ACCESS_KEY_ID"] == "tenant" and env["AWS_ENDPOINT_URL"] == "http://s3:1"
    assert "OCI_TOKEN" not in env and "bad key" not in env  # nothing of the agent's own registry identity
    # the init container's contract: envFrom that Secret and no operator defaults next to it
    ctr = model_pull_container(res.spec, res.context(defaults))
    assert ctr["envFrom"] == [{"secretRef": {"name": "mine"}}] and "env" not in ctr


def test_without_its_own_secret_the_operator_defaults_apply_over_the_shared_secret(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    defaults = OperatorDefaults(registry_endpoint_url="http://default:9000", credentials_secret="shared")
    core = FakeCore({("llm", "shared"): {"AWS_ACCESS_KEY_ID": "k", "AWS_ENDPOINT_URL": "http://in-secret"}})
    a = agent(defaults, core, tmp_path)
    res = resource()
    (pull,) = plan(A10G, [res], [], {}, DEFAULT_GPUS, defaults).pulls
    env = a.pull_env(pull, res)
    assert env["AWS_ACCESS_KEY_ID"] == "k" and env["AWS_ENDPOINT_URL"] == "http://default:9000"
    ctr = model_pull_container(res.spec, res.context(defaults))
    assert {e["name"]: e["value"] for e in ctr["env"]}["AWS_ENDPOINT_URL"] == "http://default:9000"


def test_a_missing_secret_fails_the_pull_with_its_name(tmp_path: Path) -> None:
    a = agent(OperatorDefaults(), FakeCore({}), tmp_path)
    res = resource(credentialsSecret="gone")
    (pull,) = plan(A10G, [res], [], {}, DEFAULT_GPUS, OperatorDefaults()).pulls
    with pytest.raises(RuntimeError, match="llm/gone: 404"):
        a.pull_env(pull, res)
    assert a.run_pull(pull, res) is False and (pull.model, pull.digest) in a.failures  # backed off, not fatal


def test_eviction_that_meets_a_pulls_lock_is_retried_soon_not_after_the_interval(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A pod's model-pull holds the store lock shared; eviction then does nothing (``busy``) and the
    loop comes back in BUSY_RETRY seconds instead of a whole ``--interval``."""
    from qwen_operator.modelsync import evict as evict_mod
    from qwen_operator.nodeagent import agent as agent_mod

    a = agent(OperatorDefaults(), FakeCore({}), tmp_path)
    a.config.interval = 300.0
    node_dir = f"{DEFAULT}/llm"
    monkeypatch.setattr(a, "held", lambda: {node_dir: {"Qwen--Qwen3-8B": ["1" * 12]}})
    busy = [True]

    def fake_evict(root: Path, protect: Any, policy: Any, **_: Any) -> evict_mod.EvictionReport:
        assert root == tmp_path / "llm"
        return evict_mod.EvictionReport((), (), 0, 0, False, busy=busy[0])

    monkeypatch.setattr(evict_mod, "evict", fake_evict)
    empty = NodePlan()
    a.evict(empty)
    assert a.evict_busy
    waits: list[float] = []

    def step() -> bool:
        a.evict(empty)
        return False

    def wait(timeout: float) -> bool:
        waits.append(timeout)
        busy[0] = False  # the pull finished
        if len(waits) == 2:
            a.stop.set()
        return False

    monkeypatch.setattr(a, "step", step)
    monkeypatch.setattr(a.wake, "wait", wait)
    a.config.once = False
    monkeypatch.setattr(a, "watch", lambda: [])
    assert a.run() == 0
    assert waits == [agent_mod.BUSY_RETRY, 300.0]  # soon while busy, then the interval again
