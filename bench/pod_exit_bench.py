"""Event-loop stall per GPU pod exit in the controller, at 1,000 QwenDeployments on 500 GPU nodes.

Why it exists: issue #10 item 7 — "every GPU pod exit re-runs compute() for every resource on the
event loop (~33 ms each at 600 nodes / 4,000 GPU pods: seconds of stall per pod exit with 100
resources)". The controller now (a) wakes only the pod's owner and the resources whose last
decision wanted GPUs (``Outcome.wants_gpus``) and (b) keeps free GPUs per event
(``LiveInventory``) so a reconcile reads only its own pods. This bench measures the stall of one
pod exit both ways IN THE SAME RUN, on the same in-memory caches:

* ``baseline`` — the previous path: every resource recomputed, each one recounting every GPU
  pod in the cluster (``Observed`` with all pods and no live inventory, as the controller built it);
* ``now`` — ``Controller.on_pod(DELETED)`` then ``compute(controller.observed(key))`` for exactly the
  resources the controller triggered.

The stall is the CPU time of that work (``time.process_time``, so a loaded machine does not
inflate it); it runs on the operator's event loop (API writes go to executors and are not counted:
the API client here is absent). Everything is the shipped controller code; only the API server is
absent (caches are filled directly, as the watches would fill them). Prints figures, asserts nothing.

    .venv/bin/python bench/pod_exit_bench.py [--resources 1000] [--nodes 500] [--exits 20] [--waiting 50]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import random
import statistics
import time
from typing import Any

from qwen_operator.catalog import load_catalog
from qwen_operator.controller.handlers import Controller
from qwen_operator.controller.reconcile import Observed, compute
from qwen_operator.render.names import LABEL_DEPLOYMENT, label_value, pool_selector

CATALOG = load_catalog(None)
NODE_GPUS = 8


def node(i: int) -> dict[str, Any]:
    product = "NVIDIA-L40S" if i % 2 == 0 else "NVIDIA-A10G"
    return {
        "metadata": {"name": f"gpu-{i:04d}", "labels": {"nvidia.com/gpu.product": product}},
        "spec": {},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(NODE_GPUS)},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def resource(i: int, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenDeployment",
        "metadata": {"name": f"chat-{i:04d}", "namespace": f"team-{i % 20:02d}", "uid": f"u-{i}", "generation": 1},
        "spec": {
            "model": {"name": "Qwen/Qwen3-14B", "registry": "s3://models/qwen3-14b", "quantization": "fp8"},
            "placement": {"gpuTypes": ["L40S", "A10G"]},
            "replicas": replicas,
        },
        "status": {"model": {"currentVersion": "sha256:v1", "targetVersion": "sha256:v1"}},
    }


def live(manifest: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(manifest)
    out["metadata"]["generation"] = 1
    out["metadata"]["resourceVersion"] = "1"
    if manifest["kind"] == "Deployment":
        n = manifest["spec"]["replicas"]
        out["status"] = {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "readyReplicas": n}
    return out


def pod(qwd: dict[str, Any], gpu_type: str, k: int, node_name: str) -> dict[str, Any]:
    meta = qwd["metadata"]
    labels = {**pool_selector(meta["name"], gpu_type), LABEL_DEPLOYMENT: label_value(meta["name"])}
    return {
        "metadata": {
            "name": f"{meta['name']}-{gpu_type.lower()}-{k}",
            "namespace": meta["namespace"],
            "labels": labels,
        },
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "server", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def build(n_resources: int, n_nodes: int, waiting: int, rng: random.Random) -> Controller:
    ctl = Controller(kube=None, catalog=CATALOG)  # type: ignore[arg-type]  # nothing here calls the API
    nodes = [node(i) for i in range(n_nodes)]
    for n in nodes:
        ctl.on_node("ADDED", n)
    free = {n["metadata"]["name"]: NODE_GPUS for n in nodes}
    by_type: dict[str, list[str]] = {"L40S": [], "A10G": []}
    for n in nodes:
        by_type["L40S" if "L40S" in n["metadata"]["labels"]["nvidia.com/gpu.product"] else "A10G"].append(
            n["metadata"]["name"]
        )
    for i in range(n_resources):
        qwd = resource(i, 2)
        key = (qwd["metadata"]["namespace"], qwd["metadata"]["name"])
        ctl.qwds[key] = qwd
        ctl.triggers[key] = asyncio.Event()
        obs = ctl.observed(key)
        out = compute(obs, CATALOG)
        ctl.owned[key] = {(m["kind"], m["metadata"]["name"]): live(m) for m in out.apply}
        for m in out.apply:
            if m["kind"] != "Deployment" or "gpu-type" not in str(m["metadata"].get("annotations")):
                continue
            gpu_type = m["metadata"]["annotations"]["serving.qwenops.io/gpu-type"]
            for k in range(m["spec"]["replicas"]):
                host = next((h for h in by_type[gpu_type] if free[h] > 0), None)
                if host is None:
                    break
                free[host] -= 1
                p = pod(qwd, gpu_type, k, host)
                ctl.on_pod("ADDED", p)
        # settle: the controller's own bookkeeping of who waits for GPUs
        final = compute(ctl.observed(key), CATALOG)
        if final.wants_gpus:
            ctl.wants_gpus.add(key)
    # other tenants' GPU pods fill what is left, bar a few GPUs
    j = 0
    for host, left in free.items():
        for _ in range(max(0, left - (1 if rng.random() < 0.05 else 0))):
            other = {
                "metadata": {"name": f"batch-{j}", "namespace": "batch", "labels": {}},
                "spec": {"nodeName": host, "containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
                "status": {"phase": "Running"},
            }
            ctl.on_pod("ADDED", other)
            j += 1
    # the last `waiting` resources now ask for more than the cluster has left: short of GPUs
    for key in sorted(ctl.qwds)[-waiting:] if waiting else []:
        ctl.qwds[key]["spec"]["replicas"] = 40
        if compute(ctl.observed(key), CATALOG).wants_gpus:
            ctl.wants_gpus.add(key)
    return ctl


def stall_now(ctl: Controller, victim: dict[str, Any]) -> tuple[float, int]:
    for ev in ctl.triggers.values():
        ev.clear()
    t0 = time.process_time()
    ctl.on_pod("DELETED", victim)
    woken = [k for k, ev in ctl.triggers.items() if ev.is_set()]
    for key in woken:
        compute(ctl.observed(key), CATALOG)
    return time.process_time() - t0, len(woken)


def stall_baseline(ctl: Controller, keys: list[tuple[str, str]]) -> float:
    everything = list(ctl.pods.values())
    t0 = time.process_time()
    for key in keys:
        obs = ctl.observed(key)
        # as the controller built it before: every GPU pod, free GPUs recounted per reconcile
        obs = Observed(**{**obs.__dict__, "pods": everything, "inventory": None})
        compute(obs, CATALOG)
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resources", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--exits", type=int, default=20, help="pod exits measured on the new path")
    ap.add_argument("--baseline-exits", type=int, default=1, help="pod exits measured on the previous path")
    ap.add_argument("--waiting", type=int, default=50, help="resources short of GPUs (woken by any pod exit)")
    args = ap.parse_args()
    rng = random.Random(1)
    t0 = time.process_time()
    ctl = build(args.resources, args.nodes, args.waiting, rng)
    print(
        f"setup: {len(ctl.qwds)} QwenDeployments, {len(ctl.nodes)} GPU nodes, {len(ctl.pods)} GPU pods, "
        f"{len(ctl.wants_gpus)} short of GPUs ({time.process_time() - t0:.0f} s)"
    )
    keys = sorted(ctl.qwds)
    baseline = [stall_baseline(ctl, keys) for _ in range(args.baseline_exits)]
    ours = [p for p in ctl.pods.values() if (p["metadata"].get("labels") or {}).get(LABEL_DEPLOYMENT)]
    stalls, woken = [], []
    for victim in rng.sample(ours, min(args.exits, len(ours))):
        s, n = stall_now(ctl, victim)
        stalls.append(s)
        woken.append(n)
        ctl.on_pod("ADDED", victim)  # the ReplicaSet replaces it
    base = statistics.median(baseline)
    now = statistics.median(stalls)
    print(f"baseline (every resource, full recount): {base * 1000:.0f} ms per pod exit ({len(keys)} reconciles)")
    print(
        f"now (owner + resources short of GPUs):   {now * 1000:.1f} ms per pod exit median, "
        f"{max(stalls) * 1000:.1f} ms max, {statistics.median(woken):.0f} reconciles"
    )
    per = now / max(1, statistics.median(woken))
    print(f"per woken reconcile: {per * 1000:.2f} ms; stall ratio now/baseline: {now / base:.4f}")


if __name__ == "__main__":
    main()
