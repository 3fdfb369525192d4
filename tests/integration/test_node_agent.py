"""Pre-staging on the real control plane with the real S3 server (issue #12 item 2).

The seam: in a cluster the node agent is the chart's DaemonSet, one pod per GPU node running
``qwenctl node-agent --node $NODE_NAME --cache-root /var/lib/qwen-operator/models`` on the
node's hostPath cache. kwok runs no containers, so here the **same command** runs as a host
process per kwok node, each with its own directory standing in for that node's cache
(``--cache-root <tmp>/<node>``). Everything else is real: the API server (Nodes, pods bound by
the real scheduler, the QwenDeployment and its status), the S3 server holding the versions,
the pulls (the init container's ``qwenctl model pull``, digests verified) and the operator
process writing ``status.model.staging`` and holding the roll. The agents get their registry
credentials only from the resource's credentials Secret, read through the API (their own
environment has no AWS_* variables), as a DaemonSet pod would.

Two kwok GPU nodes of different types (A10G, L40S) carry a label only this test's resource
selects; the resource allows A10G only, so only the A10G node is eligible. The second test runs
the same agents on an ``oci://`` model in the real OCI registry (CNCF distribution) with basic
auth, counting the chunks the agent fetches at the registry's own log.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client

from qwen_operator.catalog import DEFAULT_GPUS
from qwen_operator.modelsync.manifest import short_id
from qwen_operator.modelsync.oci import OCIRegistry
from qwen_operator.modelsync.registry import Registry
from qwen_operator.modelsync.synthetic import Checkpoint, Shape
from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.sandbox.nodes import NodeSpec, node_manifest
from qwen_operator.testing.oci import PASSWORD as OCI_PASSWORD
from qwen_operator.testing.oci import USER as OCI_USER
from qwen_operator.testing.oci import Secured
from qwen_operator.testing.operator import OperatorProcess
from qwen_operator.testing.s3 import S3Bucket
from qwen_operator.testing.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.s3]

GROUP, VERSION, PLURAL = "serving.qwenops.io", "v1alpha1", "qwendeployments"
SHAPE = Shape().scaled(0.05, layers=4, vocab=4096)  # ~11 MB in 4 shards
QWENCTL = [sys.executable, "-c", "from qwen_operator.cli import main; raise SystemExit(main())"]
CACHE = "serving.qwenops.io/model-cache"
VERSION_ANNOTATION = "serving.qwenops.io/model-version"
SELECT = "qwen-test/prestage"


def push(bucket: S3Bucket, src: Path, version: str) -> str:
    r = subprocess.run(
        [*QWENCTL, "model", "push", str(src), "--registry", bucket.registry_url(), "--version", version]
        + ["--tag", "stable"],
        env=bucket.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return Registry(bucket.registry_url()).resolve(tag="stable")


class Agent:
    """``qwenctl node-agent`` for one kwok node, as a host process (the DaemonSet pod's command)."""

    def __init__(self, node: str, root: Path, log: Path) -> None:
        self.node, self.root, self.log = node, root, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Agent:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OCI_"))}  # Secret only
        cmd = [*QWENCTL, "node-agent", "--node", self.node, "--cache-root", str(self.root)]
        cmd += ["--interval", "1", "--keep-others", "0", "--bandwidth", "200M"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 30) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])


@pytest.fixture
def nodes(kube_api: Any, namespace: str) -> Iterator[dict[str, str]]:
    """Two kwok GPU nodes (A10G, L40S) with a label only this test's resource selects; 2 GPUs each, so
    a roll's surge replica fits beside the serving one."""
    core = client.CoreV1Api(kube_api)
    suffix = uuid.uuid4().hex[:5]
    made = {}
    for gpu in ("A10G", "L40S"):
        spec = NodeSpec(f"pre-{gpu.lower()}-{suffix}", DEFAULT_GPUS[gpu], 2, "test", 8, 32)
        body = node_manifest(spec)
        body["metadata"]["labels"][SELECT] = namespace
        core.create_node(body)
        made[gpu] = spec.name
    wait_for(
        "kwok nodes Ready",
        lambda: all(
            any(c.type == "Ready" and c.status == "True" for c in core.read_node(n).status.conditions or [])
            for n in made.values()
        ),
        timeout=60,
    )
    yield made
    for name in made.values():
        try:
            core.delete_node(name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        # the namespace is deleted after this fixture: a pod left on a deleted kwok node would wait ~40 s
        # for the pod garbage collector; its replacement is Pending (no node) and goes with the namespace
        core.delete_collection_namespaced_pod(namespace, field_selector=f"spec.nodeName={name}", grace_period_seconds=0)


@pytest.fixture
def start_operator(
    sandbox: Sandbox, qwen_crd: Path, namespace: str, s3_bucket: S3Bucket, tmp_path: Path
) -> Iterator[Callable[[], OperatorProcess]]:
    config = tmp_path / "operator.yaml"
    config.write_text(
        yaml.safe_dump(
            {"podAnnotations": {"sandbox.qwenops.io/ready-after": "2s"}, "modelSync": {"intervalSeconds": 1}}
        )
    )
    started: list[OperatorProcess] = []

    def start() -> OperatorProcess:
        op = OperatorProcess(
            sandbox.kubeconfig,
            tmp_path / f"operator-{len(started)}.log",
            extra=["--namespace", namespace, "--config", str(config)],
            env=s3_bucket.server.env(),
        ).start()
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()
    for i, op in enumerate(started):
        print(f"--- operator {i} log tail ---\n{op.tail(60)}")


def annotation(core: Any, node: str) -> dict[str, list[str]]:
    value = (core.read_node(node).metadata.annotations or {}).get(CACHE)
    return dict(json.loads(value)) if value else {}


def verified(root: Path, namespace: str, model: str, registry: Registry, digest: str) -> bool:
    """Every file of ``digest`` is in the node cache directory with the manifest's sha256."""
    vdir = root / namespace / "models" / model / "versions" / short_id(digest)
    if not vdir.is_dir():
        return False
    for f in registry.get_manifest(digest).files:
        path = vdir / f.path
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != f.sha256.split(":", 1)[-1]:
            return False
    return True


def test_node_agents_prestage_eligible_nodes_and_the_roll_waits_for_them(
    kube_api: Any,
    namespace: str,
    nodes: dict[str, str],
    s3_bucket: S3Bucket,
    start_operator: Callable[[], OperatorProcess],
    tmp_path: Path,
) -> None:
    core = client.CoreV1Api(kube_api)
    custom = client.CustomObjectsApi(kube_api)
    base = Checkpoint(SHAPE)
    base.write(tmp_path / "v1")
    base.last_layers(1).write(tmp_path / "v2")
    v1 = push(s3_bucket, tmp_path / "v1", "v1")
    registry = Registry(s3_bucket.registry_url())
    model = f"{namespace}.chat"
    a10g, l40s = nodes["A10G"], nodes["L40S"]

    # the registry credentials the agents get: the resource's Secret (the init container's envFrom)
    creds = s3_bucket.server.env()
    core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="registry"), string_data=creds)
    )
    op = start_operator()
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "QwenDeployment",
        "metadata": {"name": "chat"},
        "spec": {
            "model": {
                "name": "Qwen/Qwen3-14B",
                "registry": s3_bucket.registry_url(),
                "version": "stable",
                "quantization": "fp8",
                "credentialsSecret": "registry",
            },
            "placement": {"gpuTypes": ["A10G"]},
            "replicas": 1,
            "scaling": {"enabled": False},
            "rollout": {"maxSurge": 1, "canaryReplicas": 0, "prestageTimeoutSeconds": 300},
            "pod": {"nodeSelector": {SELECT: namespace}},
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def status_model() -> dict[str, Any]:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chat")
        return dict((obj.get("status") or {}).get("model") or {})

    def synced_condition() -> dict[str, Any]:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chat")
        conds = (obj.get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == "ModelSynced"), {})

    def pods() -> list[Any]:
        sel = "serving.qwenops.io/deployment=chat,app.kubernetes.io/component=server"
        return [
            p
            for p in core.list_namespaced_pod(namespace, label_selector=sel).items
            if not p.metadata.deletion_timestamp
        ]

    wait_for("ModelSynced on v1", lambda: synced_condition().get("status") == "True", timeout=90)
    assert status_model()["currentVersion"] == v1
    wait_for("the replica on the A10G node", lambda: [p.spec.node_name for p in pods()] == [a10g], timeout=60)

    agents = {n: Agent(n, tmp_path / "nodes" / n, tmp_path / f"agent-{n}.log") for n in (a10g, l40s)}
    try:
        for agent in agents.values():
            agent.start()
        # 1. v1 staged only on the eligible (A10G) node, digest-verified, and published on its Node
        wait_for(
            "v1 staged on the A10G node",
            lambda: annotation(core, a10g).get(model) == [short_id(v1)],
            timeout=120,
        )
        assert verified(agents[a10g].root, namespace, model, registry, v1)
        time.sleep(2)  # the L40S agent has had many passes by now
        assert agents[l40s].alive(), agents[l40s].tail()
        assert model not in annotation(core, l40s)
        assert not (agents[l40s].root / namespace / "models" / model).exists()
        # 2. the operator counts it into status.model.staging (one eligible node: the label selects two,
        # only one is an allowed GPU type)
        wait_for(
            "status.model.staging counts v1",
            lambda: status_model().get("staging") == [{"version": v1, "eligibleNodes": 1, "nodesWithVersion": 1}],
            timeout=30,
        )

        # 3. the tag moves while the A10G node's agent is down: the roll waits for pre-staging
        agents[a10g].stop()
        v2 = push(s3_bucket, tmp_path / "v2", "v2")
        wait_for("targetVersion = v2", lambda: status_model().get("targetVersion") == v2, timeout=30)
        wait_for("ModelSynced=Prestaging", lambda: synced_condition().get("reason") == "Prestaging", timeout=30)
        prestage = status_model()["prestage"]
        assert prestage["version"] == v2 and prestage["phase"] == "Waiting", prestage
        assert a10g in synced_condition()["message"]
        time.sleep(3)
        assert {p.metadata.annotations[VERSION_ANNOTATION] for p in pods()} == {v1}, "the pools rolled anyway"
        assert status_model()["currentVersion"] == v1
        staging = {s["version"]: s for s in status_model()["staging"]}
        assert staging[v2]["nodesWithVersion"] == 0 and staging[v1]["nodesWithVersion"] == 1

        # 4. the agent comes back: it stages v2 (the target first) and keeps v1 (the pod on the node
        # serves it, and it is still currentVersion) although --keep-others is 0; then the roll proceeds
        agents[a10g].start()
        wait_for(
            "v2 staged beside the served v1",
            lambda: set(annotation(core, a10g).get(model, [])) == {short_id(v1), short_id(v2)},
            timeout=120,
        )
        staged_at = time.monotonic()
        assert verified(agents[a10g].root, namespace, model, registry, v2)
        assert verified(agents[a10g].root, namespace, model, registry, v1)
        wait_for(
            "ModelSynced on v2",
            lambda: synced_condition().get("status") == "True" and status_model().get("currentVersion") == v2,
            timeout=120,
        )
        assert status_model()["prestage"]["phase"] == "Staged"
        assert {p.metadata.annotations[VERSION_ANNOTATION] for p in pods()} == {v2}
        evs = core.list_namespaced_event(namespace, field_selector="involvedObject.kind=QwenDeployment").items
        reasons = [e.reason for e in evs]
        assert "Prestaging" in reasons and "Prestaged" in reasons and "PrestageTimeout" not in reasons
        # 5. once nothing serves, targets or currents v1 any more, --keep-others 0 evicts it
        wait_for(
            "v1 evicted once unprotected",
            lambda: annotation(core, a10g).get(model) == [short_id(v2)],
            timeout=60,
        )
        assert not (agents[a10g].root / namespace / "models" / model / "versions" / short_id(v1)).exists()
        assert status_model().get("staging") == [{"version": v2, "eligibleNodes": 1, "nodesWithVersion": 1}]
        assert op.alive(), op.tail()
        print(f"\nv2 staged, roll completed {time.monotonic() - staged_at:.1f}s later")
    finally:
        for agent in agents.values():
            agent.stop()
        for name, agent in agents.items():
            print(f"--- node agent {name} log tail ---\n{agent.tail()}")


def test_an_oci_model_is_prestaged_with_the_resources_registry_credentials(
    kube_api: Any,
    sandbox: Sandbox,
    qwen_crd: Path,
    namespace: str,
    nodes: dict[str, str],
    oci_secured: Secured,
    tmp_path: Path,
) -> None:
    """oci:// through the same agent: a real registry with basic auth, the credentials only in the
    resource's Secret (OCI_USERNAME/OCI_PASSWORD) for the agent; the operator's version watcher
    reads the registry with its own OCI_* environment, as the operator's Deployment would."""
    core = client.CoreV1Api(kube_api)
    custom = client.CustomObjectsApi(kube_api)
    creds = {"OCI_USERNAME": OCI_USER, "OCI_PASSWORD": OCI_PASSWORD}
    repo = oci_secured.repo("basic", **creds)
    base = Checkpoint(SHAPE)
    base.write(tmp_path / "v1")
    base.last_layers(1).write(tmp_path / "v2")

    def push_oci(src: Path, version: str) -> str:
        cmd = [*QWENCTL, "model", "push", str(src), "--registry", repo.url, "--version", version, "--tag", "stable"]
        r = subprocess.run(cmd, env=repo.env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return str(OCIRegistry.from_env(repo.url, env=repo.env).resolve(tag="stable"))

    v1 = push_oci(tmp_path / "v1", "v1")
    core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="registry"), string_data=creds)
    )
    config = tmp_path / "operator.yaml"
    config.write_text(yaml.safe_dump({"modelSync": {"intervalSeconds": 1}}))
    op = OperatorProcess(
        sandbox.kubeconfig,
        tmp_path / "operator-oci.log",
        extra=["--namespace", namespace, "--config", str(config)],
        env={k: v for k, v in repo.env.items() if k.startswith("OCI_")},
    ).start()
    model = f"{namespace}.chat"
    a10g, l40s = nodes["A10G"], nodes["L40S"]
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "QwenDeployment",
        "metadata": {"name": "chat"},
        "spec": {
            "model": {
                "name": "Qwen/Qwen3-14B",
                "registry": repo.url,
                "version": "stable",
                "quantization": "fp8",
                "credentialsSecret": "registry",
            },
            "placement": {"gpuTypes": ["A10G"]},
            "replicas": 1,
            "scaling": {"enabled": False},
            "rollout": {"canaryReplicas": 0},
            "pod": {"nodeSelector": {SELECT: namespace}},
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def status_model() -> dict[str, Any]:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chat")
        return dict((obj.get("status") or {}).get("model") or {})

    agents = {n: Agent(n, tmp_path / "nodes" / n, tmp_path / f"agent-{n}.log") for n in (a10g, l40s)}
    registry = OCIRegistry.from_env(repo.url, env=repo.env)
    try:
        wait_for("targetVersion = v1", lambda: status_model().get("targetVersion") == v1, timeout=90)
        for agent in agents.values():
            agent.start()
        wait_for("v1 staged on the A10G node", lambda: annotation(core, a10g).get(model) == [short_id(v1)], 120)
        assert verified(agents[a10g].root, namespace, model, cast(Registry, registry), v1)
        assert model not in annotation(core, l40s) and agents[l40s].alive(), agents[l40s].tail()
        # the tag moves: the agent stages the new target beside the current one, moving only the changed
        # chunks (GETs of blobs the node did not hold yet, counted at the registry's own log)
        gets_before = len(repo.blob_gets())
        v2 = push_oci(tmp_path / "v2", "v2")
        wait_for(
            "v2 staged beside v1",
            lambda: set(annotation(core, a10g).get(model, [])) == {short_id(v1), short_id(v2)},
            timeout=120,
        )
        assert verified(agents[a10g].root, namespace, model, cast(Registry, registry), v2)
        moved = repo.blob_gets()[gets_before:]
        new_chunks = set(registry.get_manifest(v2).unique_chunks()) - set(registry.get_manifest(v1).unique_chunks())
        assert new_chunks
        # each changed chunk fetched once; besides them only version indexes (the agent's and the watcher's)
        assert sorted(d for d in moved if d in new_chunks) == sorted(new_chunks), (moved, new_chunks)
        indexes = {registry.get_manifest(v).digest() for v in (v1, v2)}  # our chunk index, an OCI layer blob
        assert set(moved) - new_chunks <= indexes, set(moved) - new_chunks
        assert op.alive(), op.tail()
    finally:
        for agent in agents.values():
            agent.stop()
        op.stop()
        for name, agent in agents.items():
            print(f"--- node agent {name} log tail ---\n{agent.tail()}")
        print(f"--- operator log tail ---\n{op.tail(40)}")
