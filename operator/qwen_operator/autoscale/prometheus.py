"""The autoscaler's metrics source: PromQL over ``prometheus-api-client``.

Queries (DESIGN.md, "TGI facts"), scoped to one QwenDeployment's pods by namespace and
the pod names of its Deployments (:func:`pod_regex`):

* queue per pod:   ``sum by (pod)(<queue_gauge>{namespace="ns", pod=~"chat-l40s-[a-z0-9]+-[a-z0-9]+"})``
* in flight:       ``sum(<running_gauge>{...})``
* P95 latency:     ``histogram_quantile(0.95, sum by (le)(rate(<slo_latency>_bucket{...}[1m])))``
  where ``<slo_latency>`` is the runtime's time-to-first-token histogram (TGI has none and
  exports ``tgi_request_queue_duration``: the wait before the first batch, which is what
  more replicas shorten; end-to-end ``tgi_request_duration`` grows with the reply length
  and no replica count can bring a 500-token answer under 1.2 s)
* request rate:    ``sum(rate(<requests_counter>{...}[1m]))``

When the QwenDeployment has the built-in router (``spec.routing.enabled``), the router's own
series (:mod:`qwen_operator.router.metric_names`) of its pods ``<name>-router-...`` replace
the engine's where they exist: the real time to first byte as clients see it
(``qwen_router_ttft_seconds``, TGI included, which has no TTFT histogram), the requests the
router holds for want of a replica (``sum(qwen_router_held)``: invisible to the engines, and
the only signal a fleet at zero replicas has), the requests it has accepted and not answered
(``sum(qwen_router_queue_length)``: held plus in flight) and the rate at which it answers
(``sum(rate(qwen_router_requests_total[1m]))``). No ``qwen_router_held`` series at all
means no router is scraped (routing external, a Gateway API gateway, or not scraped yet):
then the engine's signals are the fallback, and so they are field by field where a router
series is empty (e.g. no TTFT sample in the window yet).

A P95 of NaN (no requests in the window) is "no signal", never zero or infinity. Any
failure (Prometheus down, timeout, HTTP error) yields ``Signals.error`` and *no numbers*:
the policy then holds, and the controller reports ``ScalingActive=False``. The client is
synchronous; call :meth:`PrometheusSource.fetch` from a worker thread (the controller uses its
bounded ``executors.METRICS`` pool). Each request is bounded by ``timeout`` and never retried
after a read timeout, and the first failed query ends the fetch.

Prometheus as users run it (:class:`Connection`, from the operator config ``prometheus.*``):
TLS is verified by default (the system trust store, or ``tls.caFile``), with an explicit
``tls.insecureSkipVerify`` opt-out and an optional client certificate; a bearer token or
basic auth password is read from a file (a mounted Secret, re-read on every request so a
rotated token is picked up) or from the environment; custom headers (e.g. a Mimir / Cortex
``X-Scope-OrgID``) go with every request. Credentials never leave this module in text: every
URL shown is :func:`redact_url` (no userinfo, no query values) and every error message is
scrubbed of the secrets in use before it reaches a condition, status, Event or log line.
"""

from __future__ import annotations

import base64
import math
import os
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engines.runtimes import MetricNames
from ..router import metric_names as router_metrics

#: Kubernetes names a Deployment's pods ``<deployment>-<pod-template-hash>-<5 random>``, cutting
#: ``<deployment>-<hash>-`` to this many characters first (``names.SimpleNameGenerator``).
_GENERATED_BASE = 58
_HASH = 10  # longest pod-template-hash (a safe-encoded 32-bit FNV hash)

LatencySource = str  # "router" (real TTFT), "engine" (the runtime's SLO histogram) or "" (none)


@dataclass(frozen=True)
class FleetSignals:
    """What Prometheus says about one QwenDeployment right now."""

    queue_per_pod: dict[str, float] = field(default_factory=dict)
    queue: float | None = None  # total waiting requests in the engines
    in_flight: float | None = None  # requests in the engines' running batches
    p95_seconds: float | None = None  # None: no signal (NaN / idle)
    request_rate: float | None = None  # requests/s over the window
    error: str | None = None  # set when Prometheus could not be read: hold
    held: float | None = None  # requests the router holds for want of a replica (None: no router series)
    router_in_flight: float | None = None  # router's accepted-not-answered (held + sent); None: no router
    latency_source: LatencySource = ""  # where p95_seconds comes from
    prompt_tokens: float | None = None  # mean estimated prompt tokens per request the router saw (PROMPT_WINDOW)
    prompt_samples: float | None = None  # requests behind prompt_tokens
    output_tokens: float | None = None  # mean generated tokens per finished request in the engines (PROMPT_WINDOW)
    output_samples: float | None = None  # finished requests behind output_tokens

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def routed(self) -> bool:
        """The router's series were read (its numbers replace the engine's)."""
        return self.held is not None


def pod_regex(deployment: str) -> str:
    """A regex matching exactly the pods of Deployment ``deployment``, never another's.

    ``chat-l40s`` matches ``chat-l40s-7d9f8c6b5-x2k4p`` but not ``chat-l40s-a10g-7d9f8c6b5-x2k4p``
    (a pool of a resource named ``chat-l40s``) nor ``chat-l40s-router-...``: a pod name has exactly
    two generated segments after its Deployment's name. Only when the name is so long that
    Kubernetes cuts the generated part (``<deployment>-<hash>-`` beyond 58 characters) does the
    regex allow any tail, and then two such names sharing 58 characters cannot be told apart."""
    escaped = deployment.replace(".", "\\\\.")  # only "." is special; "\\." inside a PromQL string
    if len(deployment) + 2 + _HASH <= _GENERATED_BASE:
        return f"{escaped}-[a-z0-9]+-[a-z0-9]+"
    return f"{escaped[:_GENERATED_BASE]}[a-z0-9-]*"


def selector(namespace: str, pod_prefixes: list[str]) -> str:
    """Label matchers for the pods of one QwenDeployment's Deployments (its pools, or its router).

    The labels are those Kubernetes pod discovery attaches (``namespace``, ``pod``); a scrape
    target registered any other way must carry them too (:data:`router_metrics.TARGET_LABELS`)."""
    alternatives = "|".join(pod_regex(p) for p in sorted(pod_prefixes)) or "__none__"
    return f'namespace="{namespace}",pod=~"{alternatives}"'


def queries(metrics: MetricNames, sel: str, window: str = "1m", quantile: float = 0.95) -> dict[str, str]:
    return {
        "queue_per_pod": f"sum by (pod)({metrics.queue_gauge}{{{sel}}})",
        "in_flight": f"sum({metrics.running_gauge}{{{sel}}})",
        "p95": f"histogram_quantile({quantile}, sum by (le)"
        f"(rate({metrics.slo_latency_histogram}_bucket{{{sel}}}[{window}])))",
        "rate": f"sum(rate({metrics.requests_counter}{{{sel}}}[{window}]))",
        **output_queries(metrics, sel),
    }


def output_queries(metrics: MetricNames, sel: str) -> dict[str, str]:
    """The mean reply length the engines generated (thinking included) over :data:`PROMPT_WINDOW`, and
    how many finished requests it averages; none when the engine's names have no such histogram."""
    gen = metrics.generated_tokens_histogram
    if not gen:
        return {}
    return {
        "output_tokens": f"sum(increase({gen}_sum{{{sel}}}[{PROMPT_WINDOW}]))"
        f" / sum(increase({gen}_count{{{sel}}}[{PROMPT_WINDOW}]))",
        "output_samples": f"sum(increase({gen}_count{{{sel}}}[{PROMPT_WINDOW}]))",
    }


#: Window of the observed request shape (the mean prompt length): long enough that one burst of
#: long prompts does not swing every pool's estimate, short enough to follow a change of workload.
PROMPT_WINDOW = "10m"


def router_queries(sel: str, window: str = "1m", quantile: float = 0.95) -> dict[str, str]:
    """The router's signals over its pods ``sel`` (summed over router replicas)."""
    m = router_metrics
    tokens = m.PROMPT_TOKENS
    return {
        "held": f"sum({m.HELD}{{{sel}}})",
        "queue_length": f"sum({m.QUEUE_LENGTH}{{{sel}}})",
        "p95": f"histogram_quantile({quantile}, sum by (le)(rate({m.TTFT_SECONDS}_bucket{{{sel}}}[{window}])))",
        "rate": f"sum(rate({m.REQUESTS_TOTAL}{{{sel}}}[{window}]))",
        "prompt_tokens": f"sum(increase({tokens}_sum{{{sel}}}[{PROMPT_WINDOW}]))"
        f" / sum(increase({tokens}_count{{{sel}}}[{PROMPT_WINDOW}]))",
        "prompt_samples": f"sum(increase({tokens}_count{{{sel}}}[{PROMPT_WINDOW}]))",
    }


def duration(seconds: float) -> str:
    """A Prometheus duration: ``5`` -> ``5s``, ``2.5`` -> ``2500ms`` (``5.0s`` is rejected)."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _scalar(result: list[dict[str, Any]]) -> float | None:
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) or math.isinf(value) else value


#: Environment variables read when the config names no file (``operator.extraEnv`` from a Secret).
TOKEN_ENV = "QWEN_OPERATOR_PROMETHEUS_TOKEN"
PASSWORD_ENV = "QWEN_OPERATOR_PROMETHEUS_PASSWORD"
REDACTED = "xxxxx"
#: header names whose values are treated as secrets (scrubbed from messages like credentials)
_SECRET_HEADER_WORDS = ("auth", "token", "key", "secret", "cookie", "password", "session")


class SettingsError(ValueError):
    """The Prometheus connection settings are inconsistent (the message names the keys, never a value)."""


def redact_url(url: str) -> str:
    """``url`` as it may be shown: userinfo replaced (``https://xxxxx@host/``), every query value
    replaced, no fragment. Prometheus users put credentials in both places."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = (f"{REDACTED}@" if "@" in parts.netloc else "") + host + (f":{port}" if port else "")
    query = "&".join(f"{k}={REDACTED}" for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


@dataclass(frozen=True)
class Connection:
    """How to reach Prometheus: the operator config ``prometheus.*`` (see packaging/values.py).

    Secrets are referenced, never held in the config: ``bearer_token_file`` / ``password_file``
    (read on every request), else ``$QWEN_OPERATOR_PROMETHEUS_TOKEN`` / ``..._PASSWORD``. A
    ``user:password@`` in ``url`` is basic auth too (stripped from the URL before any request)."""

    url: str
    ca_file: str | None = None  # PEM bundle to verify the server with (default: the system trust store)
    cert_file: str | None = None  # client certificate (mutual TLS) ...
    key_file: str | None = None  # ... and its key
    insecure_skip_verify: bool = False  # explicit opt-out of server certificate verification
    bearer_token_file: str | None = None
    username: str | None = None
    password_file: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    environ: Mapping[str, str] | None = field(default=None, repr=False, compare=False)  # None: os.environ

    def _env(self, name: str) -> str | None:
        return ((os.environ if self.environ is None else self.environ).get(name) or "").strip() or None

    def _userinfo(self) -> tuple[str | None, str | None]:
        parts = urllib.parse.urlsplit(self.url)
        user = urllib.parse.unquote(parts.username) if parts.username else None
        password = urllib.parse.unquote(parts.password) if parts.password is not None else None
        return user, password

    @property
    def base_url(self) -> str:
        """``url`` without userinfo: what requests go to."""
        parts = urllib.parse.urlsplit(self.url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, ""))

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    def auth_kind(self) -> str | None:
        """``bearer``, ``basic`` or None; raises :class:`SettingsError` when more than one is set."""
        url_user, url_password = self._userinfo()
        bearer = bool(self.bearer_token_file or self._env(TOKEN_ENV))
        basic_password = bool(self.password_file or self._env(PASSWORD_ENV))
        if url_user and (self.username or basic_password):
            raise SettingsError("prometheus.url carries user:password and prometheus.basicAuth is set: choose one")
        if bearer and (url_user or self.username or basic_password):
            raise SettingsError(
                "prometheus: a bearer token (prometheus.bearerTokenFile or $"
                + TOKEN_ENV
                + ") and basic auth (prometheus.basicAuth or user:password in prometheus.url) are both set: "
                "choose one (both use the Authorization header)"
            )
        if self.username and not basic_password:
            raise SettingsError(
                "prometheus.basicAuth.username is set without a password "
                f"(prometheus.basicAuth.passwordFile or ${PASSWORD_ENV})"
            )
        if bool(self.cert_file) != bool(self.key_file):
            raise SettingsError("prometheus.tls.certFile and prometheus.tls.keyFile go together")
        if self.insecure_skip_verify and self.ca_file:
            raise SettingsError("prometheus.tls.caFile and prometheus.tls.insecureSkipVerify: choose one")
        if urllib.parse.urlsplit(self.url).query:
            raise SettingsError(
                "prometheus.url: a query string is not supported (put a token in prometheus.bearerTokenFile "
                "or prometheus.headers)"
            )
        if bearer:
            return "bearer"
        if url_user or self.username:
            return "basic"
        return None

    def describe(self) -> str:
        """One log-safe line: where, how TLS is checked, which credential kind from where (no values)."""
        scheme = urllib.parse.urlsplit(self.url).scheme
        if scheme != "https":
            tls = "plain HTTP"
        elif self.insecure_skip_verify:
            tls = "TLS NOT verified (insecureSkipVerify)"
        else:
            tls = f"TLS verified with {self.ca_file}" if self.ca_file else "TLS verified with the system trust store"
        if self.cert_file:
            tls += ", client certificate " + self.cert_file
        kind = self.auth_kind()
        if kind == "bearer":
            auth = f"bearer token from {self.bearer_token_file or '$' + TOKEN_ENV}"
        elif kind == "basic":
            url_user, _ = self._userinfo()
            auth = "basic auth from " + (
                "the URL's userinfo" if url_user else (self.password_file or "$" + PASSWORD_ENV)
            )
        else:
            auth = "no credentials"
        headers = f", headers {', '.join(k for k, _ in self.headers)}" if self.headers else ""
        return f"{self.display_url} ({tls}; {auth}{headers})"

    def _read(self, path: str | None, env: str) -> str | None:
        if path:
            try:
                return Path(path).read_text().strip() or None
            except OSError as exc:
                # the path is config, not a secret; the error names the file only
                raise OSError(f"cannot read {path}: {exc.strerror}") from None
        return self._env(env)

    def credentials(self) -> tuple[str | None, tuple[str, str] | None]:
        """(bearer token, (user, password)) as of now: files are re-read on every call."""
        kind = self.auth_kind()
        if kind == "bearer":
            token = self._read(self.bearer_token_file, TOKEN_ENV)
            if token is None:
                raise OSError(f"the bearer token ({self.bearer_token_file or '$' + TOKEN_ENV}) is empty")
            return token, None
        if kind == "basic":
            url_user, url_password = self._userinfo()
            if url_user:
                return None, (url_user, url_password or "")
            return None, (self.username or "", self._read(self.password_file, PASSWORD_ENV) or "")
        return None, None

    def secrets(self) -> Iterator[str]:
        """Every secret value in use, in the forms it could appear in a message."""
        _, url_password = self._userinfo()
        raw_userinfo = urllib.parse.urlsplit(self.url).netloc.rpartition("@")[0]
        values = [url_password, raw_userinfo.partition(":")[2] if raw_userinfo else None]
        try:
            token, basic = self.credentials()
        except (OSError, SettingsError):
            token, basic = None, None
        values.append(token)
        if basic is not None:
            values.append(basic[1])
            values.append(base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode())
        values += [v for k, v in self.headers if any(w in k.lower() for w in _SECRET_HEADER_WORDS)]
        for v in values:
            if v and len(v) >= 3:
                yield v
                yield urllib.parse.quote(v, safe="")

    def scrub(self, text: str) -> str:
        for secret in sorted(set(self.secrets()), key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text


class _Auth:
    """``requests`` auth that reads the credential on every request (rotated tokens keep working)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def __call__(self, request: Any) -> Any:
        token, basic = self.connection.credentials()
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token}"
        elif basic is not None:
            encoded = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
            request.headers["Authorization"] = f"Basic {encoded}"
        return request


class PrometheusSource:
    connection: Connection | None = None

    def __init__(self, url: str | Connection, timeout: float = 5.0) -> None:
        import requests
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        connection = url if isinstance(url, Connection) else Connection(url)
        connection.auth_kind()  # inconsistent settings fail here, at start
        self.connection = connection
        self.url = connection.display_url  # shown in messages: never the credentials
        self.timeout = timeout
        # ``timeout`` bounds each request (connect and read); the client's default Retry would
        # repeat a read timeout 3 times with backoff, holding a worker thread for ~20 s per query
        # on a hung Prometheus. One fast reconnect only: a tick that cannot read just holds.
        retry = Retry(total=1, connect=1, read=0, status=0, other=0, backoff_factor=0)
        session = requests.Session()
        session.verify = False if connection.insecure_skip_verify else (connection.ca_file or True)
        if connection.cert_file:
            session.cert = (connection.cert_file, connection.key_file or "")
        self._prom = PrometheusConnect(
            url=connection.base_url,
            headers=dict(connection.headers) or None,
            auth=_Auth(connection),  # requests takes any callable as auth
            session=session,
            timeout=int(math.ceil(timeout)),
            retry=retry,
        )

    def _query(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._prom.custom_query(promql, params={"timeout": duration(self.timeout)})
        return result

    def fetch(
        self,
        namespace: str,
        pod_prefixes: list[str],
        metrics: MetricNames,
        router: str | None = None,
        window: str = "1m",
    ) -> FleetSignals:
        """Signals of the pods of Deployments ``pod_prefixes`` (the pools) in ``namespace``; with
        ``router`` (the router Deployment's name, when ``spec.routing.enabled``), the router's
        TTFT, held requests, queue length and request rate where its series exist."""
        q = queries(metrics, selector(namespace, pod_prefixes), window)
        rq = router_queries(selector(namespace, [router]), window) if router else None
        try:
            per_pod_raw = self._query(q["queue_per_pod"])
            in_flight = _scalar(self._query(q["in_flight"]))
            p95 = _scalar(self._query(q["p95"]))
            rate = _scalar(self._query(q["rate"]))
            output = _scalar(self._query(q["output_tokens"])) if "output_tokens" in q else None
            replies = _scalar(self._query(q["output_samples"])) if "output_samples" in q else None
            held = r_queue = r_p95 = r_rate = prompt = samples = None
            if rq is not None:
                held = _scalar(self._query(rq["held"]))
                if held is not None:  # a router is scraped: its numbers replace the engine's
                    r_queue = _scalar(self._query(rq["queue_length"]))
                    r_p95 = _scalar(self._query(rq["p95"]))
                    r_rate = _scalar(self._query(rq["rate"]))
                    prompt = _scalar(self._query(rq["prompt_tokens"]))
                    samples = _scalar(self._query(rq["prompt_samples"]))
        except Exception as exc:  # noqa: BLE001 - any failure means "no signal": hold
            detail = _short(exc)
            if self.connection is not None:
                detail = self.connection.scrub(detail)
            return FleetSignals(error=f"Prometheus at {self.url} could not be queried: {detail}")
        per_pod = {}
        for row in per_pod_raw:
            v = float(row["value"][1])
            if not math.isnan(v):
                per_pod[row["metric"].get("pod", "?")] = v
        source = "router" if r_p95 is not None else ("engine" if p95 is not None else "")
        return FleetSignals(
            queue_per_pod=per_pod,
            queue=sum(per_pod.values()) if per_pod else None,
            in_flight=in_flight,
            p95_seconds=r_p95 if r_p95 is not None else p95,
            request_rate=r_rate if r_rate is not None else rate,
            held=held,
            router_in_flight=r_queue,
            latency_source=source,
            prompt_tokens=prompt,
            prompt_samples=samples,
            output_tokens=output,
            output_samples=replies,
        )


def _short(exc: Exception) -> str:
    # urllib3 names the whole query URL before the cause (e.g. the TLS verification failure): drop the query
    text = re.sub(r"(with url: [^?\s]*)\?\S*", r"\1", f"{type(exc).__name__}: {exc}")
    return text if len(text) < 300 else text[:297] + "..."
