"""One bounded thread pool per outside dependency, so one outage cannot starve the others.

Every blocking client the controller uses (the ``kubernetes`` client, boto3, the Prometheus
client, ``huggingface_hub``'s smoke test) is synchronous and runs in a worker thread. With
``asyncio.to_thread`` they all shared the loop's default executor (``min(32, CPUs + 4)``
threads: 6 on a 2-core node), so a hung S3 endpoint or Prometheus could hold every thread
and Deployment applies would queue behind it. Each dependency now has its own pool:

========  =====  ====================================================================
pool      size   why that size
========  =====  ====================================================================
KUBE      16     applies, deletes, status writes and Events of every resource's
                 reconcile, autoscaler and version watcher: the pool that must never
                 wait on anything but the API server
REGISTRY  4      version resolution and manifest reads (boto3: 5 s connect, 15 s
                 read, 2 attempts, see :func:`versions.make_registry`); results are
                 cached per ``(registry, version)`` for the watch interval
METRICS   4      PromQL queries (:class:`autoscale.prometheus.PrometheusSource`: a
                 per-request timeout and no retries), one fetch per resource per tick
SMOKE     2      canary smoke tests (10 s per request, 2 attempts per URL)
========  =====  ====================================================================

A full pool only delays its own dependency's callers; the per-call timeouts bound how long
a thread stays taken. Threads are started lazily, so an operator without Prometheus or S3
never starts those.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

KUBE_THREADS = 16
REGISTRY_THREADS = 4
METRICS_THREADS = 4
SMOKE_THREADS = 2

KUBE = ThreadPoolExecutor(KUBE_THREADS, thread_name_prefix="qwen-kube")
REGISTRY = ThreadPoolExecutor(REGISTRY_THREADS, thread_name_prefix="qwen-registry")
METRICS = ThreadPoolExecutor(METRICS_THREADS, thread_name_prefix="qwen-metrics")
SMOKE = ThreadPoolExecutor(SMOKE_THREADS, thread_name_prefix="qwen-smoke")


async def run(pool: ThreadPoolExecutor, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in ``pool`` (``asyncio.to_thread``, but on a chosen pool)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(pool, functools.partial(fn, *args, **kwargs))
