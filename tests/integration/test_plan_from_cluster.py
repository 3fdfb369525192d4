"""`qwenctl plan --from-cluster` sees the sandbox's real free GPUs (node allocatable minus pod requests)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from qwen_operator.sandbox.cluster import Sandbox

pytestmark = pytest.mark.cluster
SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "qwen3-14b-chat.yaml"


def test_plan_from_cluster_counts_gpus_taken_by_running_pods(kube_api: Any, namespace: str, sandbox: Sandbox) -> None:
    core = client.CoreV1Api(kube_api)
    for i in range(2):  # occupy 3 GPUs on each of the two 4-GPU L40S nodes: one L40S left per node
        core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": f"busy-{i}"},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L40S"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{"name": "c", "image": "x", "resources": {"limits": {"nvidia.com/gpu": "3"}}}],
                },
            },
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace).items
        if len(pods) == 2 and all(p.spec.node_name for p in pods):
            break
        time.sleep(0.2)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "qwen_operator.cli",
            "plan",
            "-f",
            str(SAMPLE),
            "--from-cluster",
            "--kubeconfig",
            str(sandbox.kubeconfig),
            "--replicas",
            "6",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "free GPUs in the cluster (free/allocatable): " in proc.stderr and "L40S 2/8" in proc.stderr
    assert "A10G 4/4" in proc.stderr
    pools = {
        line.split()[0]: int(line.split()[1])
        for line in proc.stdout.splitlines()
        if line.split()
        and line.split()[0] in ("A10G", "L40S")
        and len(line.split()) == 6  # POOL REPLICAS SHARDS NODES GPUS $/H
    }
    # L40S first (cheapest per request/s within the SLO) on its 2 free GPUs, the rest spills to A10G
    assert pools == {"L40S": 2, "A10G": 4}, proc.stdout
