"""The version watcher's shell: smoke tests over real HTTP, error wording, config, and the
write discipline of one watcher tick (one write per change, none at rest, Events once)."""

from __future__ import annotations

import asyncio
import copy
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from qwen_operator.api.spec import QwenDeploymentSpec
from qwen_operator.capacity.model import ReplicaModel
from qwen_operator.cli import UserError
from qwen_operator.controller.cli import parse_config
from qwen_operator.controller.reconcile import Observed
from qwen_operator.controller.versions import MANAGER, SMOKE_PROMPT, VersionWatcher, classify, resolve, smoke_test
from qwen_operator.engines.runtimes import runtime_for
from qwen_operator.modelsync.manifest import ChunkRef, FileEntry, Manifest
from qwen_operator.modelsync.registry import NotFoundError, RegistryError
from qwen_operator.sim.server import SimulatedTGI, serve


class _Failing(http.server.BaseHTTPRequestHandler):
    paths: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        _Failing.paths.append(self.path)
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


class _OpenAIOnly(http.server.BaseHTTPRequestHandler):
    """Answers /v1/completions only (as vLLM's OpenAI server), in the shape ``shape`` says."""

    shape = "openai"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path != "/v1/completions":
            body, code = b'{"detail": "no route /generate"}', 404
        elif _OpenAIOnly.shape == "openai":
            body, code = b'{"object": "text_completion", "choices": [{"index": 0, "text": " ready"}]}', 200
        else:
            body, code = b'{"generated_text": " ready"}', 200
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def failing_url() -> Iterator[str]:
    _Failing.paths = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _spec(engine: str) -> QwenDeploymentSpec:
    return QwenDeploymentSpec.model_validate(
        {"model": {"name": "Qwen/Qwen3-14B", "registry": "s3://b/p", "version": "v1"}, "runtime": {"engine": engine}}
    )


TGI_SMOKE = runtime_for(_spec("tgi")).smoke_request(_spec("tgi"), SMOKE_PROMPT)
VLLM_SMOKE = runtime_for(_spec("vllm")).smoke_request(_spec("vllm"), SMOKE_PROMPT)


def test_each_engine_smoke_request_speaks_its_own_api() -> None:
    assert (TGI_SMOKE.path, TGI_SMOKE.reply) == ("/generate", "generated_text")
    assert TGI_SMOKE.payload == {"inputs": SMOKE_PROMPT, "parameters": {"max_new_tokens": 8}}
    # vLLM's OpenAI server has no /generate and knows the model only by --served-model-name
    assert (VLLM_SMOKE.path, VLLM_SMOKE.reply) == ("/v1/completions", "choices")
    assert VLLM_SMOKE.payload == {"model": "Qwen/Qwen3-14B", "prompt": SMOKE_PROMPT, "max_tokens": 8}
    vllm_args = runtime_for(_spec("vllm")).args(_spec("vllm"), 1, "/models/q")
    assert vllm_args[vllm_args.index("--served-model-name") + 1] == VLLM_SMOKE.payload["model"]
    assert VLLM_SMOKE.reply_text({"choices": [{"index": 0, "text": "ready"}]}) == "ready"
    assert TGI_SMOKE.reply_text({"generated_text": "ready"}) == "ready"
    with pytest.raises(ValueError, match=r"choices\[0\]\.text"):
        VLLM_SMOKE.reply_text({"generated_text": "a TGI answer"})
    with pytest.raises(ValueError, match="generated_text"):
        TGI_SMOKE.reply_text({"choices": [{"text": "an OpenAI answer"}]})


def test_smoke_test_passes_on_a_simulated_server_in_each_engine_dialect_and_fails_on_errors(failing_url: str) -> None:
    """TGI's /generate and vLLM's /v1/completions, both against the simulated server (it serves
    TGI's OpenAI-compatible routes; there is no vLLM-shaped simulated server yet)."""

    async def scenario() -> list[tuple[bool, str]]:
        sim = SimulatedTGI(ReplicaModel.build("Qwen/Qwen3-14B", "A10G", 1, "fp8"), cold_start_seconds=0)
        served = await serve(sim)
        try:
            return [
                await asyncio.to_thread(smoke_test, [served.base_url], request=TGI_SMOKE),
                await asyncio.to_thread(smoke_test, [served.base_url + "/"], request=VLLM_SMOKE),
                await asyncio.to_thread(smoke_test, [served.base_url, failing_url], 5.0, 2, 0.05, request=TGI_SMOKE),
            ]
        finally:
            await served.close()

    tgi, vllm, mixed = asyncio.run(scenario())
    assert tgi == (True, "1 canary replica(s) answered POST /generate")
    assert vllm == (True, "1 canary replica(s) answered POST /v1/completions")
    assert mixed[0] is False and failing_url in mixed[1] and "HTTP 503" in mixed[1] and "POST /generate" in mixed[1]
    assert len(_Failing.paths) == 2 and set(_Failing.paths) == {"/generate"}  # both attempts, TGI's route


def test_smoke_test_fails_a_canary_answering_in_the_other_engine_dialect() -> None:
    """A vLLM smoke request to a server without /v1/completions (404), and an OpenAI-shaped
    answer where TGI's generated_text belongs: both fail, naming what was wrong."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OpenAIOnly)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        ok, message = smoke_test([url], attempts=1, request=VLLM_SMOKE)
        assert ok and message.endswith("POST /v1/completions")
        ok, message = smoke_test([url], attempts=1, request=TGI_SMOKE)
        assert not ok and "HTTP 404" in message and "no route /generate" in message
        _OpenAIOnly.shape = "tgi"
        ok, message = smoke_test([url], attempts=1, request=VLLM_SMOKE)
        assert not ok and "choices[0].text" in message
    finally:
        server.shutdown()


def test_smoke_test_on_a_closed_port_names_the_connection_error() -> None:
    ok, message = smoke_test(["http://127.0.0.1:9"], timeout=2.0, attempts=1, request=TGI_SMOKE)
    assert not ok and "http://127.0.0.1:9" in message and "ConnectionRefusedError" in message


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (NotFoundError("tag 'stable' not found"), "VersionNotFound"),
        (RegistryError("resolving: access denied (AccessDenied); check AWS_ACCESS_KEY_ID"), "RegistryAccessDenied"),
        (RegistryError("x: no AWS credentials found (set AWS_ACCESS_KEY_ID)"), "RegistryAccessDenied"),
        (RegistryError("x: cannot reach the S3 endpoint (refused)"), "RegistryUnreachable"),
        (RegistryError("tag 'a b' is invalid: use 1-128 of [A-Za-z0-9._-]"), "InvalidVersion"),
    ],
)
def test_registry_failures_become_condition_reasons(exc: RegistryError, reason: str) -> None:
    res = classify(exc)
    assert res.digest is None and res.reason == reason and res.message.startswith(str(exc)[:20])


def test_sync_interval_config_is_validated() -> None:
    assert parse_config({}).model_sync.interval_seconds == 30
    assert parse_config({"modelSync": {"intervalSeconds": 1}}).model_sync.interval_seconds == 1
    for bad in (
        {"intervalSeconds": 0},
        {"intervalSeconds": "fast"},
        {"intervalSeconds": True},
        {"intervalSeconds": 0.5},
    ):
        with pytest.raises(UserError, match="modelSync.intervalSeconds"):
            parse_config({"modelSync": bad})
    with pytest.raises(UserError, match="modelSync"):
        parse_config({"modelSync": ["intervalSeconds"]})


# -- one watcher, a registry held in memory, the API server as a dict --------------------------
def manifest(*chunks: tuple[str, int]) -> Manifest:
    refs = tuple(ChunkRef("sha256:" + c * 64, n) for c, n in chunks)
    entry = FileEntry("model.safetensors", sum(n for _, n in chunks), "sha256:" + "f" * 64, refs)
    return Manifest("v", "2025-01-01T00:00:00Z", (entry,))


class MemoryRegistry:
    """Tags, versions and manifests of one registry prefix (what ``Registry`` reads from S3)."""

    def __init__(self) -> None:
        self.url = "s3://b/p"
        self.tags: dict[str, str] = {}
        self.versions: dict[str, str] = {}
        self.manifests: dict[str, Manifest] = {}
        self.down = False

    def add(self, name: str, m: Manifest, tag: str | None = None) -> str:
        digest = m.digest()
        self.manifests[digest], self.versions[name] = m, digest
        if tag:
            self.tags[tag] = digest
        return digest

    def resolve(self, version: str | None = None, tag: str | None = None) -> str:
        if self.down:
            raise RegistryError("tag 'stable' in s3://b/p: cannot reach the S3 endpoint (connection refused)")
        table, name = (self.tags, tag) if tag is not None else (self.versions, version)
        if version and version.startswith("sha256:"):
            return self.get_manifest(version).digest()
        if name not in table:
            raise NotFoundError(f"{name!r} not found")
        return table[str(name)]

    def get_manifest(self, digest: str) -> Manifest:
        if digest not in self.manifests:
            raise NotFoundError(f"manifest {digest} not found")
        return self.manifests[digest]


class ApiServer:
    """Applies status the way server-side apply merges our fields; records Events."""

    def __init__(self, qwd: dict[str, Any]) -> None:
        self.qwd = qwd
        self.writes: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []

    def apply_status(self, ns: str, name: str, status: dict[str, Any], manager: str) -> None:
        assert manager == MANAGER
        self.writes.append(copy.deepcopy(status))
        self.qwd["status"] = {**self.qwd.get("status", {}), **copy.deepcopy(status)}

    def event(self, qwd: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason))


def test_resolution_order_is_digest_then_tag_then_version_name() -> None:
    reg = MemoryRegistry()
    d1 = reg.add("v1", manifest(("a", 10)))
    d2 = reg.add("v2", manifest(("b", 10)), tag="v1")  # a tag shadowing a version name wins
    assert resolve(reg, d1) == d1  # type: ignore[arg-type]
    assert resolve(reg, "v1") == d2  # type: ignore[arg-type]
    assert resolve(reg, "v2") == d2  # type: ignore[arg-type]
    with pytest.raises(NotFoundError, match="neither a tag nor a version"):
        resolve(reg, "nope")  # type: ignore[arg-type]


def test_watcher_writes_once_per_change_never_at_rest_and_survives_a_lagging_cache() -> None:
    reg = MemoryRegistry()
    v1 = reg.add("v1", manifest(("a", 100), ("b", 50)), tag="stable")
    spec = {"model": {"name": "Qwen/Qwen3-14B", "registry": "s3://b/p", "version": "stable"}, "replicas": 0}
    qwd: dict[str, Any] = {"metadata": {"name": "chat", "namespace": "llm", "generation": 1}, "spec": spec}
    api = ApiServer(qwd)
    cache = {"qwd": copy.deepcopy(qwd)}  # the informer: refreshed only when the test says so
    watcher = VersionWatcher(
        api,
        lambda key: Observed(qwd=cache["qwd"]),
        interval=0.0,
        registry_factory=lambda url: reg,  # type: ignore[arg-type, return-value]
    )

    def tick(refresh: bool = True) -> None:
        if refresh:
            cache["qwd"] = copy.deepcopy(api.qwd)
        asyncio.run(watcher.tick(("llm", "chat")))

    tick()
    assert api.writes[-1]["model"] == {"currentVersion": v1, "targetVersion": v1, "resolvedFrom": "stable"} | {
        "lastSyncBytes": 150
    }
    assert api.writes[-1]["conditions"][0]["reason"] == "Synced"  # scaled to zero: nothing to roll
    tick(), tick()
    assert len(api.writes) == 1, "a watcher at rest must not write"

    v2 = reg.add("v2", manifest(("a", 100), ("c", 70)), tag="stable")
    tick(refresh=False)  # the informer lags behind our own writes from here on
    tick(refresh=False)
    assert len(api.writes) == 2 and api.writes[-1]["model"]["targetVersion"] == v2
    assert api.writes[-1]["model"]["lastSyncBytes"] == 70  # only the chunk v1 lacks
    assert [r for _, r in api.events] == ["TargetVersionChanged", "ModelSynced"] * 2  # no repeats while lagging

    reg.down = True
    tick()
    tick()
    cond = api.writes[-1]["conditions"][0]
    assert (cond["status"], cond["reason"]) == ("False", "RegistryUnreachable")
    assert "connection refused" in cond["message"] and api.writes[-1]["model"]["targetVersion"] == v2
    assert api.events[-1] == ("Warning", "RegistryUnreachable") and len(api.writes) == 3


def test_watcher_reports_hf_registries_as_not_managed() -> None:
    spec = {"model": {"name": "Qwen/Qwen3-14B", "registry": "hf://Qwen/Qwen3-14B", "version": "main"}}
    qwd: dict[str, Any] = {"metadata": {"name": "chat", "namespace": "llm", "generation": 2}, "spec": spec}
    api = ApiServer(qwd)
    watcher = VersionWatcher(api, lambda key: Observed(qwd=api.qwd))
    asyncio.run(watcher.tick(("llm", "chat")))
    asyncio.run(watcher.tick(("llm", "chat")))
    assert len(api.writes) == 1
    cond = api.writes[0]["conditions"][0]
    assert (cond["status"], cond["reason"]) == ("Unknown", "RegistryNotManaged") and "hf://" in cond["message"]
