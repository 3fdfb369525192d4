"""The oci:// backend's pure parts: URLs, WWW-Authenticate challenges, token answers,
credentials and TLS settings from the environment, the manifest layout, scheme choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_operator.modelsync.backend import RegistryError, open_registry
from qwen_operator.modelsync.manifest import MEDIA_TYPE, ChunkRef, FileEntry, Manifest
from qwen_operator.modelsync.oci import (
    ARTIFACT_TYPE,
    CHUNK_MEDIA_TYPE,
    MODELPACK_CONFIG,
    OCIURL,
    Challenge,
    Credentials,
    OCIRegistry,
    TLSSettings,
    VersionManifest,
    _Client,
    is_loopback,
    manifest_document,
    parse_challenges,
    token_from_response,
)
from qwen_operator.modelsync.registry import Registry

D = ["sha256:" + c * 64 for c in "abcdef"]


@pytest.mark.parametrize(
    ("url", "host", "hostname", "repo"),
    [
        (
            "oci://registry.example.com/models/qwen3-14b",
            "registry.example.com",
            "registry.example.com",
            "models/qwen3-14b",
        ),
        ("oci://harbor.corp:8443/ml/qwen__3.a-b/", "harbor.corp:8443", "harbor.corp", "ml/qwen__3.a-b"),
        ("oci://127.0.0.1:5000/q", "127.0.0.1:5000", "127.0.0.1", "q"),
        ("oci://[::1]:5000/q", "[::1]:5000", "::1", "q"),
        ("oci://localhost/a/b/c", "localhost", "localhost", "a/b/c"),
    ],
)
def test_url_parse(url: str, host: str, hostname: str, repo: str) -> None:
    u = OCIURL.parse(url)
    assert (u.host, u.hostname, u.repository) == (host, hostname, repo)
    assert str(u) == url.rstrip("/")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("oci://registry.example.com", "not of the form oci://HOST"),
        ("s3://bucket/prefix", "not of the form oci://HOST"),
        ("oci://registry.example.com/Models/Qwen", "repository 'Models/Qwen' is invalid"),
        ("oci://registry.example.com/models/qwen:v1", "names a tag or digest"),
        ("oci://registry.example.com/models/qwen@sha256:" + "a" * 64, "names a tag or digest"),
        ("oci://registry.example.com:99999/m", "not a valid HOST"),
        ("oci://bad_host/m", "not a valid HOST"),
        ("oci://r.example.com/a//b", "is invalid"),
    ],
)
def test_url_parse_rejects(url: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        OCIURL.parse(url)


def test_loopback() -> None:
    assert all(is_loopback(h) for h in ("localhost", "127.0.0.1", "127.3.2.1", "::1"))
    assert not any(is_loopback(h) for h in ("10.0.0.1", "registry.example.com", "localhost.example.com"))


def test_challenges_bearer_with_a_comma_in_the_scope() -> None:
    header = (
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:m/q:pull,push"'
    )
    assert parse_challenges(header) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.example.com/token",
                "service": "registry.example.com",
                "scope": "repository:m/q:pull,push",
            },
        )
    ]


def test_challenges_several_unquoted_and_escaped() -> None:
    header = 'Basic realm="Registry \\"main\\"", Bearer realm=https://a/token, service=svc ,error="insufficient_scope"'
    got = parse_challenges(header)
    assert [c.scheme for c in got] == ["basic", "bearer"]
    assert got[0].params == {"realm": 'Registry "main"'}
    assert got[1].params == {"realm": "https://a/token", "service": "svc", "error": "insufficient_scope"}
    assert parse_challenges("") == []
    assert parse_challenges("BASIC Realm=x")[0] == Challenge("basic", {"realm": "x"})  # case-insensitive names


def test_token_answers() -> None:
    assert token_from_response(b'{"token": "t1", "expires_in": 300}') == ("t1", 300.0)
    assert token_from_response(b'{"access_token": "t2"}') == ("t2", 60.0)  # default lifetime
    assert token_from_response(b'{"token": "t3", "expires_in": 5}') == ("t3", 60.0)  # at least 60 s
    with pytest.raises(RegistryError, match="without a token"):
        token_from_response(b'{"details": "x"}')
    with pytest.raises(RegistryError, match="not JSON"):
        token_from_response(b"<html>")


def test_credentials_from_env() -> None:
    assert Credentials.from_env({}) == Credentials()
    creds = Credentials.from_env({"OCI_USERNAME": "u", "OCI_PASSWORD": "p:w"})
    assert creds.basic() == "Basic dTpwOnc="  # base64("u:p:w")
    assert "p:w" not in repr(creds) and "check OCI_USERNAME ('u')" in creds.hint()
    assert Credentials.from_env({"OCI_TOKEN": "tok"}).token == "tok"
    with pytest.raises(RegistryError, match="both OCI_USERNAME and OCI_PASSWORD"):
        Credentials.from_env({"OCI_USERNAME": "u"})
    with pytest.raises(RegistryError, match="either OCI_TOKEN or"):
        Credentials.from_env({"OCI_USERNAME": "u", "OCI_PASSWORD": "p", "OCI_TOKEN": "t"})
    assert "set OCI_USERNAME/OCI_PASSWORD" in Credentials().hint()


def test_tls_from_env(tmp_path: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    bundle = tmp_path / "ca.pem"
    bundle.write_text(pem)
    assert TLSSettings.from_env({}) == TLSSettings()
    assert TLSSettings.from_env({"OCI_CA_BUNDLE": str(bundle)}).ca_file == str(bundle)
    assert TLSSettings.from_env({"OCI_CA_BUNDLE": pem}).ca_data == pem.strip()
    assert TLSSettings.from_env({"OCI_PLAIN_HTTP": "True"}).plain_http
    with pytest.raises(RegistryError, match="no such file"):
        TLSSettings.from_env({"OCI_CA_BUNDLE": str(tmp_path / "missing.pem")})
    with pytest.raises(RegistryError, match="OCI_PLAIN_HTTP='maybe'"):
        TLSSettings.from_env({"OCI_PLAIN_HTTP": "maybe"})


def test_https_unless_loopback_or_told() -> None:
    """Off loopback the scheme is HTTPS without asking the network; plain HTTP only when
    OCI_PLAIN_HTTP says so."""
    remote = OCIURL.parse("oci://registry.example.com/m")
    assert _Client(remote, Credentials(), TLSSettings(), 4).base() == "https://registry.example.com"
    told = _Client(remote, Credentials(), TLSSettings(plain_http=True), 4)
    assert told.base() == "http://registry.example.com"
    assert told.scope(False) == "repository:m:pull" and told.scope(True) == "repository:m:pull,push"


def test_challenge_answers_without_network() -> None:
    url = OCIURL.parse("oci://registry.example.com/m")
    anonymous = _Client(url, Credentials(), TLSSettings(), 4)
    with pytest.raises(
        RegistryError, match=r"access denied \(HTTP 401: UNAUTHORIZED\); the registry wants credentials"
    ):
        anonymous._answer([Challenge("basic", {"realm": "r"})], False, None, "x", "UNAUTHORIZED", retried=False)
    basic = _Client(url, Credentials("u", "p"), TLSSettings(), 4)
    basic._answer([Challenge("basic", {"realm": "r"})], False, None, "x", "", retried=False)
    assert basic._authorization(False, "x") == "Basic dTpw"
    with pytest.raises(RegistryError, match="check OCI_USERNAME"):  # the same credentials refused: final
        basic._answer([Challenge("basic", {"realm": "r"})], False, "Basic dTpw", "x", "", retried=True)
    static = _Client(url, Credentials(token="T"), TLSSettings(), 4)
    assert static._authorization(True, "x") == "Bearer T"
    with pytest.raises(RegistryError, match="OCI_TOKEN was refused"):
        static._answer([Challenge("bearer", {"realm": "https://a/t"})], False, "Bearer T", "x", "", retried=False)
    with pytest.raises(RegistryError, match="no usable WWW-Authenticate"):
        anonymous._answer([Challenge("negotiate", {})], False, None, "x", "", retried=False)
    plain_realm = [Challenge("bearer", {"realm": "http://auth.example.com/token"})]
    with pytest.raises(RegistryError, match="plain HTTP; refusing to send credentials"):
        basic._answer(plain_realm, False, None, "x", "", retried=False)


def manifest(version: str = "v1") -> Manifest:
    files = (
        FileEntry("model.safetensors", 30, D[0], (ChunkRef(D[1], 10), ChunkRef(D[2], 10), ChunkRef(D[1], 10))),
        FileEntry("config.json", 5, D[3], (ChunkRef(D[3], 5),)),
    )
    return Manifest(version, "2026-01-01T00:00:00Z", files)


def test_manifest_document_layout() -> None:
    raw, config, index = manifest_document(manifest(), "models/qwen3-14b")
    assert manifest_document(manifest(), "models/qwen3-14b")[0] == raw  # canonical: same digest every time
    doc = json.loads(raw)
    assert doc["artifactType"] == ARTIFACT_TYPE and doc["config"]["mediaType"] == MODELPACK_CONFIG
    assert doc["layers"][0] == {"mediaType": MEDIA_TYPE, "digest": manifest().digest(), "size": len(index)}
    # every distinct chunk once, in file order (config.json sorts first)
    assert [x["digest"] for x in doc["layers"][1:]] == [D[3], D[1], D[2]]
    assert {x["mediaType"] for x in doc["layers"][1:]} == {CHUNK_MEDIA_TYPE}
    cfg = json.loads(config)
    assert cfg["descriptor"] == {"name": "qwen3-14b", "version": "v1", "createdAt": "2026-01-01T00:00:00Z"}
    assert cfg["modelfs"]["diffIds"] == [x["digest"] for x in doc["layers"]]
    vm = VersionManifest.parse("sha256:" + "0" * 64, raw, "m")
    assert vm.version == "v1" and vm.index == (manifest().digest(), len(index)) and D[2] in vm.layers


def test_a_container_image_is_not_a_model_version() -> None:
    image = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D[0], "size": 1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D[1], "size": 1}],
    }
    with pytest.raises(RegistryError, match="is not a model version pushed by qwenctl"):
        VersionManifest.parse(D[5], json.dumps(image).encode(), "tag 'latest'")
    with pytest.raises(RegistryError, match="malformed OCI manifest"):
        VersionManifest.parse(D[5], b"[]", "tag 'x'")


def test_open_registry_dispatches_on_the_scheme() -> None:
    assert isinstance(open_registry("oci://registry.example.com/models/q"), OCIRegistry)
    assert isinstance(open_registry("s3://bucket/models/q", endpoint_url="http://127.0.0.1:1"), Registry)
    assert open_registry("oci://registry.example.com/models/q").name_hint() == "models/q"
    with pytest.raises(
        RegistryError, match=r"use s3://BUCKET/PREFIX, oci://HOST\[:PORT\]/REPOSITORY .* or hf://ORG/REPO"
    ):
        open_registry("https://registry.example.com/models/q")
    with pytest.raises(RegistryError, match="--endpoint-url applies to s3://"):
        open_registry("oci://registry.example.com/models/q", endpoint_url="http://x")


def test_short_timeouts_for_a_watcher() -> None:
    """A caller that must not stall (the version watcher) gets its own connect/read timeouts."""
    timeout = OCIRegistry.from_env("oci://r.example.com/m", env={}, timeout=(1.5, 4.0))._client.pool.connection_pool_kw
    assert (timeout["timeout"].connect_timeout, timeout["timeout"].read_timeout) == (1.5, 4.0)
