"""Pure parts of the sandbox: --gpus parsing, node shapes, the derived wrapper go.mod, /proc parsing."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from qwen_operator.sandbox import binaries, procs
from qwen_operator.sandbox.nodes import GPUSpecError, node_manifest, parse_gpus, plan_nodes


def test_parse_gpus_defaults_per_node_shape() -> None:
    assert parse_gpus("a10g=4,l40s=2,a100-80gb=8") == {"A10G": (4, 4), "L40S": (2, 4), "A100-80GB": (8, 8)}


def test_parse_gpus_explicit_per_node() -> None:
    assert parse_gpus("A10G=3x1") == {"A10G": (3, 1)}


@pytest.mark.parametrize("bad", ["h900=1", "a10g", "a10g=four", "a10g=4x16", "a10g=-1"])
def test_parse_gpus_rejects_bad_input_naming_known_types(bad: str) -> None:
    with pytest.raises(GPUSpecError) as err:
        parse_gpus(bad)
    assert "--gpus" in str(err.value)
    if bad.startswith("h900"):
        for known in ("a10g", "l40s", "a100-40gb", "a100-80gb"):
            assert known in str(err.value)


def test_plan_nodes_cuts_remainder_and_names_deterministically() -> None:
    nodes = plan_nodes(parse_gpus("a10g=6,a100-80gb=8"))
    assert [(n.name, n.gpus) for n in nodes] == [("gpu-a10g-0", 4), ("gpu-a10g-1", 2), ("gpu-a100-80gb-0", 8)]
    assert nodes[0].instance_type == "g5.12xlarge"
    assert nodes[1].instance_type == "g5.12xlarge-2gpu"


def test_node_manifest_has_gfd_labels_capacity_and_optional_taint() -> None:
    (node,) = plan_nodes(parse_gpus("l40s=4"))
    m = node_manifest(node, taint=True)
    labels = m["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-L40S"
    assert labels["nvidia.com/gpu.present"] == "true"
    assert labels["nvidia.com/gpu.count"] == "4"
    assert int(labels["nvidia.com/gpu.memory"]) > 40000  # MiB, as GPU Feature Discovery reports
    assert m["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert m["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert m["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    assert node_manifest(node, taint=False)["spec"]["taints"] == []


UPSTREAM = """module k8s.io/kubernetes

go 1.26.0

require (
\tk8s.io/api v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tgithub.com/x/y => github.com/x/y v1.0.0
)
"""


def test_derive_gomod_maps_every_staging_replace_to_its_v0_twin() -> None:
    out = binaries.derive_kubernetes_gomod(UPSTREAM, "v1.37.2")
    assert "require k8s.io/kubernetes v1.37.2" in out
    assert "\tk8s.io/api => k8s.io/api v0.37.2" in out
    assert "\tk8s.io/client-go => k8s.io/client-go v0.37.2" in out
    assert "github.com/x/y" not in out  # only staging modules are twinned
    assert "go 1.26.0" in out


def test_derive_gomod_refuses_a_gomod_without_staging() -> None:
    with pytest.raises(ValueError):
        binaries.derive_kubernetes_gomod("module x\n", "v1.37.2")


def test_committed_wrapper_gomod_twins_every_upstream_staging_module() -> None:
    """The committed go.mod names exactly the upstream staging set (checked against the module cache if present)."""
    gomod = (binaries.WRAPPERS / "kubernetes" / "go.mod").read_text()
    assert f"require k8s.io/kubernetes {binaries.KUBERNETES_VERSION}" in gomod or (
        f"k8s.io/kubernetes {binaries.KUBERNETES_VERSION}" in gomod
    )
    twin = "v0." + binaries.KUBERNETES_VERSION.split(".", 1)[1]
    replaced = [line for line in gomod.splitlines() if "=> k8s.io/" in line]
    assert len(replaced) >= 25
    assert all(line.strip().endswith(twin) for line in replaced)


def test_missing_binaries_are_explained_with_the_build_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_OPERATOR_CACHE", str(tmp_path))
    with pytest.raises(binaries.MissingToolError) as err:
        binaries.locate()
    assert "make setup" in str(err.value)
    assert "kube-apiserver" in str(err.value)


def test_missing_go_is_explained_with_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(binaries.MissingToolError) as err:
        binaries._go()
    assert "install" in str(err.value) and "go" in str(err.value).lower()


def test_missing_prometheus_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    from qwen_operator.sandbox import prometheus

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(binaries.MissingToolError) as err:
        prometheus.find_prometheus()
    assert "apt-get install prometheus" in str(err.value)


def test_listeners_reads_proc_for_our_own_socket() -> None:
    import os

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        found = procs.listeners([os.getpid()])
        assert any(x.port == port and x.address == "127.0.0.1" and x.loopback for x in found)
        assert procs.port_listening(port)
    assert not procs.port_listening(port)
