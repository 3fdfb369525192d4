"""``qwenctl plan`` / ``qwenctl render`` on the sample resources and on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qwen_operator.cli import main

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"


def test_plan_prints_table_and_pools(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["plan", "-f", str(SAMPLES / "qwen3-14b-chat.yaml"), "--gpus", "a10g=8,l40s=2", "--replicas", "3"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "GPU" in out and "SHARDS" in out and "WHY" in out
    assert out.index("POOL") > out.index("WHY")
    pool_lines = out[out.index("POOL") :].splitlines()[1:3]
    # L40S first (cheapest per request/s within the SLO), spilling over to A10G
    assert [(line.split()[0], int(line.split()[1])) for line in pool_lines] == [("L40S", 2), ("A10G", 1)]
    assert "total: 3 replica(s)" in out


def test_plan_exits_1_when_replicas_do_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["plan", "-f", str(SAMPLES / "qwen2.5-72b-a100.yaml"), "--gpus", "a100-80gb=4", "--replicas", "2"])
    assert rc == 1
    assert "InsufficientGPUs" in capsys.readouterr().out


def test_render_prints_applyable_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["render", "-f", str(SAMPLES / "qwen2.5-72b-a100.yaml")])
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert rc == 0
    kinds = ["Service", "Service", "PodDisruptionBudget", "ServiceAccount", "Role", "RoleBinding"]
    assert [d["kind"] for d in docs] == [*kinds, "PodDisruptionBudget", "Deployment", "Deployment"]
    assert docs[-2]["metadata"]["name"] == "qwen72b-router"
    dep = docs[-1]
    assert dep["metadata"] == {**dep["metadata"], "name": "qwen72b-a100-80gb", "namespace": "llm"}
    assert dep["spec"]["replicas"] == 2
    gpus = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert gpus == "4"


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d["spec"]["scaling"].update(minReplicas=9, maxReplicas=2), "spec.scaling"),
        (lambda d: d["spec"]["runtime"].update(engine="triton"), "spec.runtime.engine"),
        (lambda d: d["spec"].update(bogus=True), "spec.bogus"),
        (lambda d: d.update(apiVersion="serving.qwenops.io/v1"), "apiVersion"),
        (lambda d: d["metadata"].pop("name"), "metadata.name"),
    ],
)
def test_bad_resources_name_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str], edit, needle: str) -> None:  # type: ignore[no-untyped-def]
    doc = yaml.safe_load((SAMPLES / "qwen3-14b-chat.yaml").read_text())
    edit(doc)
    path = tmp_path / "cr.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["plan", "-f", str(path)]) == 2
    assert needle in capsys.readouterr().err


def test_bad_gpus_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-f", str(SAMPLES / "qwen3-14b-chat.yaml"), "--gpus", "h900=2"]) == 2
    assert "--gpus" in capsys.readouterr().err
    assert main(["plan", "-f", str(SAMPLES / "qwen3-14b-chat.yaml"), "--gpus", "a10g=lots"]) == 2


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", "/nonexistent/cr.yaml"]) == 2
    assert "/nonexistent/cr.yaml" in capsys.readouterr().err
