"""The operator config on the real control plane: a real ``qwenctl operator run --config``
process renders its registry and node-cache defaults into the pool Deployments (the resource's
own spec winning), its version watcher reaches the registry through ``registry.endpointURL``
rather than the operator's ambient AWS environment, and an invalid config stops it at start."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from qwen_operator.modelsync.registry import Registry
from qwen_operator.modelsync.synthetic import Checkpoint, Shape
from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.testing.operator import OperatorProcess
from qwen_operator.testing.s3 import S3Bucket
from qwen_operator.testing.wait import wait_for

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "serving.qwenops.io", "v1alpha1", "qwendeployments"
LABEL = "serving.qwenops.io/deployment"
NODE_CACHE = "/mnt/nvme/qwen-models"
DEAD_ENDPOINT = "http://127.0.0.1:9"  # nothing listens on the discard port


def qwd(name: str, registry: str = "s3://models/qwen3-14b", **model: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "QwenDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "Qwen/Qwen3-14B", "registry": registry, "quantization": "fp8", **model},
            "placement": {"gpuTypes": ["L40S"]},
            "replicas": 1,
            "scaling": {"enabled": False},
        },
    }


class Api:
    def __init__(self, api: Any, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.ns = namespace

    def create(self, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def get(self, name: str) -> dict[str, Any]:
        obj: Any = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        return dict(obj)

    def resolved(self, name: str) -> None:
        """Record a resolved model version in status, as the version watcher does once the registry answers.

        No registry runs in the rendering tests, and an s3:// resource creates no pool before its
        version resolves (create once); ``status.model`` is what the reconciler renders from.
        """
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "QwenDeployment",
            "metadata": {"name": name},
            "status": {"model": {"targetVersion": "sha256:" + "0" * 64, "resolvedFrom": "stable"}},
        }
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            self.ns,
            PLURAL,
            name,
            body,
            field_manager="integration-test",
            force=True,
            _content_type="application/apply-patch+yaml",
        )

    def pod_spec(self, name: str) -> Any:
        """The pod template of the resource's (single) pool Deployment, once it exists."""

        def one() -> Any:
            items = self.apps.list_namespaced_deployment(
                self.ns, label_selector=f"{LABEL}={name},app.kubernetes.io/component=server"
            ).items
            return items[0].spec.template.spec if len(items) == 1 else None

        return wait_for(f"the pool Deployment of {name}", one, timeout=60)


def model_pull(pod: Any) -> Any:
    (init,) = pod.init_containers
    assert init.name == "model-pull"
    return init


def env_of(container: Any) -> dict[str, str]:
    return {e.name: e.value for e in container.env or []}


def secrets_of(container: Any) -> list[str]:
    return [s.secret_ref.name for s in container.env_from or []]


def host_path(pod: Any) -> str:
    (cache,) = [v for v in pod.volumes if v.name == "model-cache"]
    return str(cache.host_path.path)


@pytest.fixture
def start_operator(
    sandbox: Sandbox, qwen_crd: Path, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None) -> OperatorProcess:
        path = tmp_path / f"config-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(config))
        op = OperatorProcess(
            sandbox.kubeconfig,
            tmp_path / f"operator-{len(started)}.log",
            extra=["--namespace", namespace, "--config", str(path)],
            env=env,
        )
        started.append(op)
        return op.start()

    yield start
    for op in started:
        op.stop()
        print(f"--- operator log tail ---\n{op.tail(40)}")


def test_registry_and_node_cache_defaults_reach_the_deployment_and_the_spec_wins(
    kube_api: Any, namespace: str, start_operator: Callable[..., OperatorProcess]
) -> None:
    config = {
        "registry": {
            "endpointURL": "http://minio.storage.svc:9000",
            "region": "eu-west-1",
            "credentialsSecret": "registry-creds",
        },
        "nodeCache": {"path": NODE_CACHE, "allowedPaths": ["/srv/models"]},
    }
    op = start_operator(config)
    api = Api(kube_api, namespace)

    api.create(qwd("defaults"))
    api.resolved("defaults")
    pod = api.pod_spec("defaults")
    pull = model_pull(pod)
    assert secrets_of(pull) == ["registry-creds"]
    assert env_of(pull) == {
        "AWS_ENDPOINT_URL": "http://minio.storage.svc:9000",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    assert host_path(pod) == f"{NODE_CACHE}/{namespace}"  # each namespace its own directory
    # the CRD no longer stores a default path: the resource really leaves it unset
    assert "path" not in api.get("defaults")["spec"]["model"]["cache"]

    api.create(qwd("own", credentialsSecret="team-creds", cache={"path": "/srv/models"}))
    api.resolved("own")
    pod = api.pod_spec("own")
    pull = model_pull(pod)
    assert secrets_of(pull) == ["team-creds"]
    assert env_of(pull) == {}  # the resource's Secret is its whole registry environment
    assert host_path(pod) == f"/srv/models/{namespace}"  # an allowed directory (nodeCache.allowedPaths)
    assert op.alive(), op.tail()


@pytest.mark.s3
def test_the_version_watcher_uses_the_configured_endpoint_over_the_ambient_one(
    kube_api: Any, namespace: str, s3_bucket: S3Bucket, tmp_path: Path, start_operator: Callable[..., OperatorProcess]
) -> None:
    src = tmp_path / "v1"
    Checkpoint(Shape().scaled(0.02, layers=2, vocab=1024)).write(src)
    push = subprocess.run(
        [sys.executable, "-m", "qwen_operator.cli", "model", "push", str(src), "--registry", s3_bucket.registry_url()]
        + ["--version", "v1", "--tag", "stable"],
        env=s3_bucket.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert push.returncode == 0, push.stderr
    digest = Registry(s3_bucket.registry_url()).resolve(tag="stable")
    server = s3_bucket.server
    # the operator's own environment points at a dead endpoint; only the config's reaches the registry
    config = {
        "registry": {"endpointURL": server.endpoint_url, "region": server.region},
        "modelSync": {"intervalSeconds": 1},
    }
    op = start_operator(config, env={"AWS_ENDPOINT_URL": DEAD_ENDPOINT, "AWS_DEFAULT_REGION": "ap-south-1"})
    api = Api(kube_api, namespace)
    api.create(qwd("synced", registry=s3_bucket.registry_url(), version="stable"))

    def target() -> Any:
        return ((api.get("synced").get("status") or {}).get("model") or {}).get("targetVersion")

    wait_for("status.model.targetVersion resolved through registry.endpointURL", lambda: target() == digest)
    pull = model_pull(api.pod_spec("synced"))
    assert env_of(pull)["AWS_ENDPOINT_URL"] == server.endpoint_url
    assert op.alive(), op.tail()


def test_an_invalid_config_stops_the_operator_at_start_naming_the_key(
    start_operator: Callable[..., OperatorProcess],
) -> None:
    with pytest.raises(RuntimeError) as err:
        start_operator({"nodeCache": {"path": "relative/models"}, "registry": {"endpointUrl": "http://x:9000"}})
    message = str(err.value)
    assert "exited (2)" in message
    assert "nodeCache.path" in message and "registry.endpointUrl: unknown key" in message
