"""Pytest fixture for the real Prometheus server (loopback, file-based service discovery)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..sandbox.prometheus import PrometheusServer

__all__ = ["prometheus"]


@pytest.fixture()
def prometheus(tmp_path: Path) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path / "prometheus", scrape_interval="1s")
    server.start()
    try:
        yield server
    finally:
        server.stop()
