"""The router's Prometheus metric names and the labels its scrape targets carry (pure constants).

Why it exists: two sides must agree on these names, the router that exports them
(:mod:`.metrics`, aiohttp/prometheus_client-bound) and the autoscaler's Prometheus adapter
that queries them (:mod:`qwen_operator.autoscale.prometheus`), which must not import the
router's I/O modules. One place, stdlib only, imported by both.

Scrape-target contract (what a real cluster's pod discovery gives, and what the sandbox's
bridge must attach to each router target it registers with Prometheus): the labels
``namespace`` (the QwenDeployment's namespace) and ``pod`` (the router pod's name, as the
router Deployment ``<name>-router`` names its pods: ``<name>-router-<template hash>-<suffix>``).
The adapter selects a resource's router pods by exactly that name shape, so resource
``chat`` never reads the router of ``chat-l40s`` (whose pods are ``chat-l40s-router-...``).
"""

from __future__ import annotations

#: Histogram of the time from the router receiving a request to the first response byte (hold
#: and retries included), labels ``pool`` and ``version``; base name (``_bucket`` etc. appended).
#: A non-streamed answer (first byte = last token) counts without the engine's generation time
#: when it reports it (TGI's ``x-total-time`` - ``x-queue-time``): hold + hops + queue wait.
TTFT_SECONDS = "qwen_router_ttft_seconds"
#: Gauge: requests held in the router, waiting for an endpoint that can take them.
HELD = "qwen_router_held"
#: Gauge: requests accepted and not answered yet (held plus in flight to endpoints).
QUEUE_LENGTH = "qwen_router_queue_length"
#: Gauge per endpoint (labels ``endpoint``, ``pool``): requests in flight to it.
ENDPOINT_IN_FLIGHT = "qwen_router_endpoint_in_flight"
#: Gauge per pool: Ready endpoints the router routes to.
ENDPOINTS = "qwen_router_endpoints"
#: Counter of answered requests, labels ``pool``, ``code`` (the exposed name; prometheus_client keeps ``_total``).
REQUESTS_TOTAL = "qwen_router_requests_total"
#: Counter of requests sent again to another endpoint, label ``reason``.
RETRIES_TOTAL = "qwen_router_retries_total"
#: Counter of requests the router answered 503 itself, label ``reason``.
REJECTED_TOTAL = "qwen_router_rejected_total"
#: Counter of endpoint failures, labels ``pool``, ``phase``.
UPSTREAM_ERRORS_TOTAL = "qwen_router_upstream_errors_total"
#: Histogram: how long held requests waited for an endpoint.
HOLD_SECONDS = "qwen_router_hold_seconds"
#: Histogram: estimated prompt tokens per request.
PROMPT_TOKENS = "qwen_router_prompt_tokens"

#: Labels every router scrape target must carry (Kubernetes pod discovery's ``namespace`` and ``pod``).
TARGET_LABELS = ("namespace", "pod")
