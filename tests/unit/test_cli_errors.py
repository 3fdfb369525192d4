"""Every failure a user can cause at the command line is one actionable ``error:`` line, never a traceback.

Runs the real console entry point in a subprocess (as a user's shell would), with bad flags, missing
files, unreachable servers and a sandbox that is not running.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = [
    ("simulate: missing trace", ["simulate", "--trace", "{tmp}/nope.csv"], "--trace"),
    ("simulate: unknown GPU", ["simulate", "--gpus", "h900=2"], "--gpus"),
    ("simulate: bad envelope", ["simulate", "--envelope", "yearly"], "--envelope"),
    ("simulate: trace with wrong columns", ["simulate", "--trace", "{tmp}/bad.csv"], "expected columns"),
    ("plan: missing file", ["plan", "-f", "{tmp}/missing.yaml"], "missing.yaml"),
    ("plan: not a QwenDeployment", ["plan", "-f", "{tmp}/bad.csv"], "kind"),
    ("render: missing file", ["render", "-f", "{tmp}/missing.yaml"], "missing.yaml"),
    ("operator: missing config", ["operator", "run", "--config", "{tmp}/nope.yaml"], "--config"),
    ("sandbox env: not running", ["sandbox", "env", "--name", "no-such-sandbox"], "not running"),
    ("model push: not a directory", ["model", "push", "{tmp}/none", "--registry", "s3://b/m", "--version", "v1"], ""),
    (
        "model ls: registry unreachable",
        ["model", "ls", "--registry", "s3://bucket/m", "--endpoint-url", "http://127.0.0.1:9"],
        "",
    ),
    ("model ls: not s3", ["model", "ls", "--registry", "ftp://host/m"], "registry"),
]


@pytest.mark.parametrize(("what", "argv", "needle"), CASES, ids=[c[0] for c in CASES])
def test_cli_failure_is_one_line(tmp_path: Path, what: str, argv: list[str], needle: str) -> None:
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "QWEN_TRACES_DIR", "QWENCTL_DEBUG"))}
    env.update(
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="y",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_MAX_ATTEMPTS="1",
        AWS_EC2_METADATA_DISABLED="true",
        HOME=str(tmp_path),
    )
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "qwen_operator.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode != 0, f"{what}: exited 0\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, f"{what}: traceback\n{proc.stderr}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, f"{what}: expected one error line, got\n{proc.stderr}"
    assert needle in errors[0], f"{what}: {errors[0]!r} does not name {needle!r}"
