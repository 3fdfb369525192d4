"""A tiny certificate-authenticated Kubernetes REST client for bootstrapping the sandbox.

``qwenctl sandbox up`` must create nodes and a marker object before any other tool is
configured, and ``status`` should answer in milliseconds; the full ``kubernetes`` client
is heavier than these few calls need. Standard library only (``urllib`` + ``ssl``).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

_PLURALS = {"Node": "nodes", "ConfigMap": "configmaps", "Namespace": "namespaces"}


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class ApiClient:
    def __init__(self, server: str, ca: Path, cert: Path, key: Path, timeout: float = 10.0) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        self._ctx = ssl.create_default_context(cafile=str(ca))
        self._ctx.load_cert_chain(str(cert), str(key))

    def _request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> bytes:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        req.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=self.timeout) as resp:
                out: bytes = resp.read()
                return out
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("message", detail)
            except ValueError:
                pass
            raise ApiError(exc.code, detail) from None

    def get_raw(self, path: str) -> bytes:
        return self._request("GET", path)

    def get(self, path: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self._request("GET", path))
        return out

    def exists(self, path: str) -> bool:
        try:
            self._request("GET", path)
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    def apply(self, obj: dict[str, Any]) -> None:
        """Create ``obj`` or, if it exists, merge-patch it (and its status for Nodes)."""
        kind, meta = obj["kind"], obj["metadata"]
        plural = _PLURALS[kind]
        base = "/api/v1" + (f"/namespaces/{meta['namespace']}" if "namespace" in meta else "")
        try:
            self._request("POST", f"{base}/{plural}", obj)
        except ApiError as exc:
            if exc.status != 409:
                raise
            item = f"{base}/{plural}/{meta['name']}"
            patch = {k: v for k, v in obj.items() if k not in ("status", "apiVersion", "kind")}
            self._request("PATCH", item, patch, "application/merge-patch+json")
            if "status" in obj:
                self._request("PATCH", item + "/status", {"status": obj["status"]}, "application/merge-patch+json")
