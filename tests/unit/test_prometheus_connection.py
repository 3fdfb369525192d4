"""The autoscaler's Prometheus client as users run it: TLS verified by default, a CA bundle, bearer
token or basic auth from a file or the environment, custom headers, and credentials that never
reach a message (issue #11, item 4). The loopback server here is a plain HTTP(S) endpoint that
records what it is sent; the real Prometheus with TLS and basic auth is in
tests/integration/test_prometheus_auth.py."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qwen_operator.autoscale.prometheus import (
    PASSWORD_ENV,
    TOKEN_ENV,
    Connection,
    PrometheusSource,
    SettingsError,
    redact_url,
)
from qwen_operator.cli import UserError
from qwen_operator.controller.cli import parse_config, prometheus_connection
from qwen_operator.engines.runtimes import TGI
from qwen_operator.testing.prometheus import make_tls

SECRET = "pl4nted-S3cret-7f3a"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://prometheus.monitoring:9090", "http://prometheus.monitoring:9090"),
        (f"https://reader:{SECRET}@prom.example/", "https://xxxxx@prom.example/"),
        (f"https://{SECRET}@prom.example:443/api", "https://xxxxx@prom.example:443/api"),
        (f"https://prom.example/select?token={SECRET}&x=1#frag", "https://prom.example/select?token=xxxxx&x=xxxxx"),
        ("https://[::1]:9090", "https://[::1]:9090"),
    ],
)
def test_urls_are_shown_without_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_the_config_maps_to_the_connection() -> None:
    cfg = parse_config(
        {
            "prometheus": {
                "url": "https://prom.example",
                "tls": {"caFile": "/s/ca.crt", "certFile": "/s/tls.crt", "keyFile": "/s/tls.key"},
                "bearerTokenFile": "/s/token",
                "headers": {"X-Scope-OrgID": "team-a"},
            }
        }
    )
    c = prometheus_connection(cfg)
    assert (c.url, c.ca_file, c.cert_file, c.key_file, c.bearer_token_file) == (
        "https://prom.example",
        "/s/ca.crt",
        "/s/tls.crt",
        "/s/tls.key",
        "/s/token",
    )
    assert c.headers == (("X-Scope-OrgID", "team-a"),) and not c.insecure_skip_verify
    assert prometheus_connection(cfg, "https://flag.example").url == "https://flag.example"  # the flag wins


@pytest.mark.parametrize(
    ("prometheus", "words"),
    [
        ({"url": f"https://u:{SECRET}@p", "bearerTokenFile": "/t"}, "bearer token"),
        ({"url": "https://p", "bearerTokenFile": "/t", "basicAuth": {"username": "u", "passwordFile": "/p"}}, "both"),
        ({"url": f"https://u:{SECRET}@p", "basicAuth": {"username": "u", "passwordFile": "/p"}}, "choose one"),
        ({"url": "https://p", "basicAuth": {"username": "u"}}, "without a password"),
        ({"url": "https://p", "tls": {"certFile": "/c"}}, "certFile and prometheus.tls.keyFile"),
        ({"url": "https://p", "tls": {"caFile": "/c", "insecureSkipVerify": True}}, "insecureSkipVerify"),
        ({"url": f"https://p/?token={SECRET}"}, "query string"),
    ],
)
def test_inconsistent_settings_are_one_error_naming_keys_never_values(prometheus: dict[str, Any], words: str) -> None:
    with pytest.raises(UserError) as err:
        prometheus_connection(parse_config({"prometheus": prometheus}))
    assert words in str(err.value) and SECRET not in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("prometheus", "key"),
    [
        ({"bearerTokenFile": "token"}, "prometheus.bearerTokenFile"),
        ({"tls": {"caFile": "ca.crt"}}, "prometheus.tls.caFile"),
        ({"tls": {"insecureSkipVerify": "yes"}}, "prometheus.tls.insecureSkipVerify"),
        ({"headers": {"X Bad": "v"}}, "prometheus.headers.X Bad"),
        ({"basicAuth": {"password": "inline"}}, "prometheus.basicAuth.password: unknown key"),
    ],
)
def test_invalid_prometheus_keys_are_named(prometheus: dict[str, Any], key: str) -> None:
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        parse_config({"prometheus": prometheus})


def test_the_environment_is_the_fallback_for_a_token_or_password() -> None:
    bearer = Connection("https://p", environ={TOKEN_ENV: SECRET})
    assert bearer.auth_kind() == "bearer" and bearer.credentials() == (SECRET, None)
    basic = Connection("https://p", username="reader", environ={PASSWORD_ENV: SECRET})
    assert basic.auth_kind() == "basic" and basic.credentials() == (None, ("reader", SECRET))
    assert Connection("https://p", environ={}).auth_kind() is None
    assert SECRET not in bearer.describe() and "$" + TOKEN_ENV in bearer.describe()


def test_a_token_file_is_reread_on_every_request(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    c = Connection("https://p", bearer_token_file=str(token))
    assert c.credentials() == ("first", None)
    token.write_text("rotated")
    assert c.credentials() == ("rotated", None)


# -- against a loopback server -------------------------------------------------------------
class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers like Prometheus, or, with ``status``, fails and reflects every request header in its body
    (the worst case a message could copy credentials from)."""

    seen: list[dict[str, str]] = []
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).seen.append(dict(self.headers.items()))
        if type(self).status != 200:
            body = json.dumps(dict(self.headers.items())).encode()
        else:
            body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    tls = make_tls(tmp_path / "tls")
    Recorder.seen, Recorder.status = [], 200
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.socket = tls.server_context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", tls.ca
    finally:
        server.shutdown()
        server.server_close()


def test_tls_is_verified_by_default_and_with_the_ca_bundle(tls_server: tuple[str, Path], tmp_path: Path) -> None:
    url, ca = tls_server
    token = tmp_path / "token"
    token.write_text(SECRET)
    unverified = PrometheusSource(Connection(url, bearer_token_file=str(token)), timeout=3)
    failed = unverified.fetch("llm", ["chat-l40s"], TGI().metrics)
    assert not failed.ok and "CERTIFICATE_VERIFY_FAILED" in (failed.error or ""), failed.error
    assert Recorder.seen == []  # the token was never sent to an unverified server
    headers = (("X-Scope-OrgID", "team-a"),)
    ok = PrometheusSource(Connection(url, ca_file=str(ca), bearer_token_file=str(token), headers=headers), timeout=3)
    signals = ok.fetch("llm", ["chat-l40s"], TGI().metrics)
    assert signals.ok, signals.error
    assert Recorder.seen and all(h["Authorization"] == f"Bearer {SECRET}" for h in Recorder.seen)
    assert all(h["X-Scope-OrgID"] == "team-a" for h in Recorder.seen)
    skip = PrometheusSource(Connection(url, insecure_skip_verify=True), timeout=3)  # the explicit opt-out
    assert skip.fetch("llm", ["chat-l40s"], TGI().metrics).ok


def test_a_failing_server_reflecting_the_credentials_leaks_nothing(tls_server: tuple[str, Path]) -> None:
    url, ca = tls_server
    Recorder.status = 401
    host = url.removeprefix("https://")
    source = PrometheusSource(Connection(f"https://reader:{SECRET}@{host}", ca_file=str(ca)), timeout=3)
    signals = source.fetch("llm", ["chat-l40s"], TGI().metrics)
    assert Recorder.seen and Recorder.seen[0]["Authorization"].startswith("Basic ")  # the userinfo was used
    assert not signals.ok and "401" in (signals.error or "")
    assert SECRET not in (signals.error or "") and Recorder.seen[0]["Authorization"] not in (signals.error or "")
    assert f"Prometheus at https://xxxxx@{host} could not be queried" in (signals.error or ""), signals.error


def test_inconsistent_settings_fail_at_construction() -> None:
    with pytest.raises(SettingsError):
        PrometheusSource(Connection(f"https://u:{SECRET}@p", bearer_token_file="/t"))
