"""Start the real Prometheus server on loopback for autoscaling tests, e2e and the demo.

Prometheus is the Debian package (``make setup`` installs it). Scrape targets come from
``file_sd_configs``: :meth:`PrometheusServer.set_targets` rewrites the target file
atomically and Prometheus notices via inotify, so simulated replicas can come and go
without restarts, just like pods discovered through Kubernetes SD in a real cluster.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import procs
from .binaries import MissingToolError

INSTALL_HINT = (
    "the Prometheus server is not installed: run `make setup`, or `apt-get install prometheus` "
    "(Debian/Ubuntu), or put a `prometheus` binary on PATH"
)


def find_prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise MissingToolError(INSTALL_HINT)
    return path


@dataclass(frozen=True)
class Target:
    """One scrape target: ``host:port`` plus the labels a Kubernetes SD would attach."""

    address: str
    labels: dict[str, str]


class PrometheusServer:
    """A Prometheus process bound to 127.0.0.1 with file-based service discovery."""

    def __init__(self, directory: Path | None = None, scrape_interval: str = "2s", job: str = "tgi") -> None:
        self.dir = directory or Path(tempfile.mkdtemp(prefix="qwen-prom-"))
        self.extra_args: list[str] = []  # e.g. --web.config.file (TLS, basic auth: qwen_operator.testing.prometheus)
        self.scrape_interval = scrape_interval
        self.job = job
        self.port = 0
        self.pid = 0
        self.binary = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def targets_file(self) -> Path:
        return self.dir / "targets.json"

    def config(self) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "scrape_interval": self.scrape_interval,
                    "scrape_timeout": self.scrape_interval,
                    "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": "5s"}],
                }
            ],
        }

    def start(self, timeout: float = 30.0, port: int = 0) -> PrometheusServer:
        """Start on ``port`` (0: a free one) with the data directory of any earlier run."""
        self.binary = find_prometheus()
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.targets_file.exists():
            self.set_targets([])
        cfg = self.dir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.port = port or procs.free_port()
        self.pid = procs.start(
            [
                self.binary,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
                *self.extra_args,
            ],
            self.dir / "prometheus.log",
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not procs.is_running(self.pid):
                log = (self.dir / "prometheus.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"prometheus exited during start-up:\n{log}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus not ready after {timeout:.0f}s (log: {self.dir / 'prometheus.log'})")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def running(self) -> bool:
        return bool(self.pid) and procs.is_running(self.pid, self.binary)

    def set_targets(self, targets: list[Target]) -> None:
        """Replace the scrape targets (atomic write; picked up by file SD within seconds)."""
        doc = [{"targets": [t.address], "labels": t.labels} for t in targets]
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.targets_file)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query through the HTTP API (for tests; the operator uses prometheus-api-client)."""
        qs = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=5) as resp:
            body = json.loads(resp.read())
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def active_targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active", timeout=5) as resp:
            targets: list[dict[str, Any]] = json.loads(resp.read())["data"]["activeTargets"]
            return targets

    def stop(self) -> None:
        if self.pid:
            procs.stop(self.pid, self.binary or find_prometheus())

    def restart(self, timeout: float = 30.0) -> PrometheusServer:
        """Stop and start again at the same address with the same data (a Prometheus pod restarted
        behind its Service)."""
        port = self.port
        self.stop()
        return self.start(timeout, port=port)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
