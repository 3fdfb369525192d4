"""Prometheus as users run it, with the operator on the real control plane (issue #11, item 4).

The real Prometheus serves HTTPS with basic auth (``--web.config.file``; certificate from a test
CA); a bearer-token proxy stands in front of it for the token case (see
:mod:`qwen_operator.testing.prometheus`). Unique secrets are planted in the URL's userinfo, in a
bearer token file and in a wrong password. The operator runs four times (one config each):

1. basic auth from the URL's userinfo, TLS verified with the CA file: queries succeed;
2. a bearer token from a file plus a tenant header, through the proxy: queries succeed;
3. a wrong password in the URL: Prometheus answers 401, the autoscaler holds and says so;
4. the token with TLS verified against the system trust store (no caFile): the handshake fails
   and the token is never sent.

Then every QwenDeployment (status and conditions), every Event of the namespace and every operator
log are searched for each planted secret (and its base64 / URL-encoded forms): none may appear,
while runs 1 and 2 prove the secrets were used (their queries succeeded, the servers saw them).
"""

from __future__ import annotations

import base64
import json
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_controller import Qwd, resource  # the harness of the controller tests

from qwen_operator.sandbox.cluster import Sandbox
from qwen_operator.testing.operator import OperatorProcess
from qwen_operator.testing.prometheus import BearerProxy, SecuredPrometheus, TLSFiles, basic_auth, make_tls
from qwen_operator.testing.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

RUN = uuid.uuid4().hex[:12]
PASSWORD = f"pw-planted-{RUN}"
TOKEN = f"tok-planted-{RUN}"
WRONG = f"wrong-planted-{RUN}"
USER = "autoscaler"


@pytest.fixture()
def tls(tmp_path: Path) -> TLSFiles:
    return make_tls(tmp_path / "tls")


@pytest.fixture()
def secured(tmp_path: Path, tls: TLSFiles) -> Iterator[SecuredPrometheus]:
    server = SecuredPrometheus(tmp_path / "prometheus", tls, {USER: PASSWORD, "proxy": f"proxy-{RUN}"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def proxy(secured: SecuredPrometheus, tls: TLSFiles, tmp_path: Path) -> Iterator[BearerProxy]:
    # the proxy reaches Prometheus with its own identity, as kube-rbac-proxy does
    p = BearerProxy(secured, basic_auth("proxy", f"proxy-{RUN}"), TOKEN, tls).start()
    try:
        yield p
    finally:
        p.stop()


def scaled(name: str) -> dict[str, Any]:
    return resource(
        name,
        replicas=1,
        gpu_types=["L40S"],
        scaling={"enabled": True, "minReplicas": 1, "maxReplicas": 2, "intervalSeconds": 5},
    )


def scaling_active(qwds: Qwd, name: str, status: str, reason: str) -> dict[str, Any]:
    return dict(
        wait_for(
            f"{name}: ScalingActive={status} {reason}",
            lambda: (
                (c := qwds.condition(name, "ScalingActive")) and c["status"] == status and c["reason"] == reason and c
            ),
            timeout=90,
        )
    )


def run_operator(
    sandbox: Sandbox, tmp_path: Path, namespace: str, tag: str, prometheus: dict[str, Any]
) -> OperatorProcess:
    config = tmp_path / f"{tag}.yaml"
    config.write_text(yaml.safe_dump({"prometheus": prometheus}))
    log = tmp_path / f"operator-{tag}.log"
    return OperatorProcess(sandbox.kubeconfig, log, ["--namespace", namespace, "--config", str(config)]).start()


def forms(secret: str) -> list[str]:
    return [
        secret,
        urllib.parse.quote(secret, safe=""),
        base64.b64encode(f"{USER}:{secret}".encode()).decode(),
        base64.b64encode(secret.encode()).decode().rstrip("="),
    ]


def test_credentials_are_used_and_never_shown(
    sandbox: Sandbox,
    qwen_crd: Path,
    kube_api: Any,
    namespace: str,
    secured: SecuredPrometheus,
    proxy: BearerProxy,
    tls: TLSFiles,
    tmp_path: Path,
) -> None:
    # Prometheus really requires the credentials
    assert secured.get("/api/v1/query?query=up", authorization="")[0] == 401
    assert secured.get("/api/v1/query?query=up", authorization=basic_auth(USER, WRONG))[0] == 401
    host = secured.url.removeprefix("https://")
    token_file = tmp_path / "secret" / "token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN + "\n")
    qwds = Qwd(kube_api, namespace)
    logs: list[Path] = []
    shown_url = f"https://xxxxx@{host}"

    # 1. basic auth from the URL's userinfo, TLS verified with the CA bundle
    op = run_operator(
        sandbox,
        tmp_path,
        namespace,
        "basic",
        {"url": f"https://{USER}:{PASSWORD}@{host}", "tls": {"caFile": str(tls.ca)}},
    )
    logs.append(op.log)
    try:
        qwds.create(scaled("basic"))
        ok = scaling_active(qwds, "basic", "True", "MetricsAvailable")
        assert "Scaling on queue depth" in ok["message"], ok
        assert f"autoscaling reads Prometheus at {shown_url} (TLS verified with {tls.ca}" in op.log.read_text()
    finally:
        op.stop()

    # 2. a bearer token from a file and a tenant header, through the token-checking proxy
    seen_before = len(proxy.seen)
    op = run_operator(
        sandbox,
        tmp_path,
        namespace,
        "bearer",
        {
            "url": proxy.url,
            "tls": {"caFile": str(tls.ca)},
            "bearerTokenFile": str(token_file),
            "headers": {"X-Scope-OrgID": "team-a"},
        },
    )
    logs.append(op.log)
    try:
        qwds.create(scaled("bearer"))
        scaling_active(qwds, "bearer", "True", "MetricsAvailable")
        sent = proxy.seen[seen_before:]
        assert sent and all(h.get("Authorization") == f"Bearer {TOKEN}" for h in sent)
        assert all(h.get("X-Scope-OrgID") == "team-a" for h in sent)
        assert f"bearer token from {token_file}" in op.log.read_text()
    finally:
        op.stop()

    # 3. a wrong password: 401, the autoscaler holds and names the failure, not the password
    op = run_operator(
        sandbox, tmp_path, namespace, "wrong", {"url": f"https://{USER}:{WRONG}@{host}", "tls": {"caFile": str(tls.ca)}}
    )
    logs.append(op.log)
    try:
        qwds.create(scaled("wrong"))
        failed = scaling_active(qwds, "wrong", "False", "MetricsUnavailable")
        assert f"Prometheus at {shown_url} could not be queried" in failed["message"], failed
        assert "401" in failed["message"], failed
    finally:
        op.stop()

    # 4. TLS verified by default: the test CA is not trusted without caFile, so nothing is sent
    seen_before = len(proxy.seen)
    op = run_operator(sandbox, tmp_path, namespace, "untrusted", {"url": proxy.url, "bearerTokenFile": str(token_file)})
    logs.append(op.log)
    try:
        qwds.create(scaled("untrusted"))
        failed = scaling_active(qwds, "untrusted", "False", "MetricsUnavailable")
        assert "CERTIFICATE_VERIFY_FAILED" in failed["message"], failed
        assert len(proxy.seen) == seen_before  # the token never left the operator
    finally:
        op.stop()

    # nowhere to be seen: every resource's status and conditions, every Event, every operator log
    places: dict[str, str] = {}
    for name in ("basic", "bearer", "wrong", "untrusted"):
        places[f"QwenDeployment {name}"] = json.dumps(qwds.get(name))
    for event in qwds.core.list_namespaced_event(namespace).items:
        places[f"Event {event.metadata.name}"] = json.dumps(qwds.core.api_client.sanitize_for_serialization(event))
    for log in logs:
        places[f"log {log.name}"] = log.read_text(errors="replace")
    assert any("MetricsUnavailable" in text for text in places.values())  # the search covers the failures
    for secret in (PASSWORD, TOKEN, WRONG):
        for form in forms(secret):
            leaks = [where for where, text in places.items() if form in text]
            assert not leaks, f"{form!r} appears in {leaks}"
