"""The init-container seam runs the rendered ``model-pull`` command, with the node's cache
directory standing in for the hostPath volume (``sandbox/initpods.py``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwen_operator.cli import main as qwenctl
from qwen_operator.sandbox.initpods import InitSeamError, invocation

SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "qwen3-14b-chat.yaml"


def rendered_pod(capsys: pytest.CaptureFixture[str], node: str = "gpu-l40s-0") -> dict[str, Any]:
    """A pod of the sample's first pool Deployment, as the scheduler would bind it."""
    assert qwenctl(["render", "-f", str(SAMPLE)]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["spec"]["template"]["spec"].get("initContainers"))
    template = dep["spec"]["template"]
    return {"metadata": {"name": "chat-l40s-1", **template["metadata"]}, "spec": {**template["spec"], "nodeName": node}}


def test_the_rendered_pull_runs_on_the_nodes_cache_directory(capsys: pytest.CaptureFixture[str]) -> None:
    pod = rendered_pod(capsys)
    init = pod["spec"]["initContainers"][0]
    secrets: list[str] = []

    def secret(name: str) -> dict[str, str]:
        secrets.append(name)
        return {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}

    inv = invocation(pod, Path("/tmp/nodes"), secret)
    assert inv is not None
    cache = Path("/tmp/nodes/gpu-l40s-0/llm")  # hostPath /var/lib/qwen-operator/models/llm
    expected = [str(cache) if a == "/models" else a for a in init["args"]]
    assert inv.argv == [sys.executable, "-m", "qwen_operator.cli", *init["command"][1:], *expected]
    assert str(cache) in inv.argv and "/models" not in inv.argv
    assert inv.cache_dirs == [cache]
    # the Secret its envFrom names, as the kubelet would inject it
    assert secrets == [init["envFrom"][0]["secretRef"]["name"]] and inv.env["AWS_ACCESS_KEY_ID"] == "k"


def test_what_the_seam_cannot_stand_in_for_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    pod = rendered_pod(capsys)
    unbound = {**pod, "spec": {k: v for k, v in pod["spec"].items() if k != "nodeName"}}
    with pytest.raises(InitSeamError, match="not bound"):
        invocation(unbound, Path("/tmp/nodes"), lambda _n: {})
    shell = {**pod["spec"]["initContainers"][0], "command": ["sh"]}
    other = {**pod, "spec": {**pod["spec"], "initContainers": [shell]}}
    with pytest.raises(InitSeamError, match="not qwenctl"):
        invocation(other, Path("/tmp/nodes"), lambda _n: {})
    # a pod without the init container (a router pod) has nothing to run
    bare = {**pod, "spec": {**pod["spec"], "initContainers": []}}
    assert invocation(bare, Path("/tmp/nodes"), lambda _n: {}) is None
