"""Thin Kubernetes I/O for the controller: server-side apply, delete, status apply, Events.

One field manager per concern (``qwen-operator`` for workloads and the reconciler's
status, ``qwen-operator-autoscaler`` for ``status.autoscaler`` and ``ScalingActive``,
``qwen-operator-modelsync`` for ``status.model`` and ``ModelSynced``): the CRD declares
``status.conditions`` a map list keyed by ``type``, so each manager owns exactly its own
conditions and nobody does read-modify-write on shared lists.

Who writes which status field (one field manager each; the API server merges them):

=====================================  =============================  ==========================
field                                  field manager                  writers
=====================================  =============================  ==========================
``status`` (replicas, pools, Ready,    ``qwen-operator``              the reconciler
Progressing, Degraded, ...)
``status.autoscaler``,                 ``qwen-operator-autoscaler``   the autoscaler
``ScalingActive``
``status.model``, ``ModelSynced``      ``qwen-operator-modelsync``    the version watcher, and
                                                                      the reconciler for a
                                                                      canary timeout only
=====================================  =============================  ==========================

``status.model`` has two writers (a canary timeout is the reconciler's, a smoke-test result
the watcher's), so both write it with optimistic concurrency: ``apply_status(...,
resource_version=rv)`` carries the ``resourceVersion`` the decision was made from, and the
API server refuses the apply (409, raised as :class:`StatusConflictError`) if anything changed
since. The loser re-reads and decides again instead of overwriting the other's result.

The official ``kubernetes`` client is synchronous: every call here runs in the bounded
``executors.KUBE`` pool (never the default executor other dependencies use) so kopf's event
loop never blocks. A ``WriteCounter`` counts every mutating call, which tests and the
steady-state benchmark read.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any, cast

from kubernetes import client

from ..api import API_VERSION, GROUP, KIND, PLURAL, VERSION
from .metrics import API_WRITES

FIELD_MANAGER = "qwen-operator"
#: Custom resources the controller applies: kind -> (group, version, plural).
CUSTOM_KINDS = {
    "ServiceMonitor": ("monitoring.coreos.com", "v1", "servicemonitors"),
    "InferencePool": ("inference.networking.k8s.io", "v1", "inferencepools"),
    "HTTPRoute": ("gateway.networking.k8s.io", "v1", "httproutes"),
    "LeaderWorkerSet": ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets"),
}
APPLY = "application/apply-patch+yaml"


class StatusConflictError(Exception):
    """A status apply's ``resourceVersion`` precondition failed: the resource changed since it was read."""


class WriteCounter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1
        API_WRITES.labels(what).inc()

    @property
    def total(self) -> int:
        return sum(self.counts.values())


WRITES = WriteCounter()


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.policy = client.PolicyV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    # -- workloads -----------------------------------------------------------------------
    def apply(self, manifest: Mapping[str, Any], manager: str = FIELD_MANAGER) -> None:
        """Server-side apply ``manifest`` (force: this operator owns what it renders)."""
        obj = dict(manifest)
        kind, meta = obj["kind"], obj["metadata"]
        name, ns = meta["name"], meta["namespace"]
        kw: dict[str, Any] = {"field_manager": manager, "force": True, "_content_type": APPLY}
        WRITES.add(f"apply:{kind}")
        if kind == "Deployment":
            self.apps.patch_namespaced_deployment(name, ns, obj, **kw)
        elif kind == "Service":
            self.core.patch_namespaced_service(name, ns, obj, **kw)
        elif kind == "PodDisruptionBudget":
            self.policy.patch_namespaced_pod_disruption_budget(name, ns, obj, **kw)
        elif kind == "ServiceAccount":
            self.core.patch_namespaced_service_account(name, ns, obj, **kw)
        elif kind == "Role":
            self.rbac.patch_namespaced_role(name, ns, obj, **kw)
        elif kind == "RoleBinding":
            self.rbac.patch_namespaced_role_binding(name, ns, obj, **kw)
        elif kind in CUSTOM_KINDS:
            group, version, plural = CUSTOM_KINDS[kind]
            self.custom.patch_namespaced_custom_object(group, version, ns, plural, name, obj, **kw)
        else:
            raise ValueError(f"the controller does not apply {kind}")

    def delete(self, obj: Mapping[str, Any]) -> None:
        """Delete an owned object (a pool Deployment leaving the plan, or what routing no longer renders).

        The uid precondition makes sure a same-named object created since (e.g. by a user) is kept."""
        kind, meta = str(obj["kind"]), obj["metadata"]
        name, ns, uid = meta["name"], meta["namespace"], meta.get("uid")
        if kind == "Deployment":
            self.delete_deployment(ns, name, uid)
            return
        WRITES.add(f"delete:{kind}")
        body = client.V1DeleteOptions(
            propagation_policy="Background", preconditions=client.V1Preconditions(uid=uid) if uid else None
        )
        try:
            if kind == "Service":
                self.core.delete_namespaced_service(name, ns, body=body)
            elif kind == "PodDisruptionBudget":
                self.policy.delete_namespaced_pod_disruption_budget(name, ns, body=body)
            elif kind == "ServiceAccount":
                self.core.delete_namespaced_service_account(name, ns, body=body)
            elif kind == "Role":
                self.rbac.delete_namespaced_role(name, ns, body=body)
            elif kind == "RoleBinding":
                self.rbac.delete_namespaced_role_binding(name, ns, body=body)
            elif kind in CUSTOM_KINDS:
                group, version, plural = CUSTOM_KINDS[kind]
                self.custom.delete_namespaced_custom_object(group, version, ns, plural, name, body=body)
            else:
                raise ValueError(f"the controller does not delete {kind}")
        except client.ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def delete_deployment(self, namespace: str, name: str, uid: str | None = None) -> None:
        WRITES.add("delete:Deployment")
        body = client.V1DeleteOptions(
            propagation_policy="Background", preconditions=client.V1Preconditions(uid=uid) if uid else None
        )
        try:
            self.apps.delete_namespaced_deployment(name, namespace, body=body)
        except client.ApiException as exc:
            if exc.status not in (404, 409):
                raise

    # -- the custom resource -------------------------------------------------------------
    def get_qwd(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            return cast(dict[str, Any], obj)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def apply_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        manager: str = FIELD_MANAGER,
        resource_version: str | None = None,
    ) -> str | None:
        """Server-side apply ``status`` under ``manager``; with ``resource_version``, only if the
        resource is still at that version (else :class:`StatusConflictError`, nothing written).
        Returns the resourceVersion the write produced (None when the response has none)."""
        metadata: dict[str, Any] = {"name": name, "namespace": namespace}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "status": dict(status)}
        WRITES.add(f"status:{manager}")
        try:
            written = self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body, field_manager=manager, force=True, _content_type=APPLY
            )
        except client.ApiException as exc:
            # force=True settles field-manager conflicts, so a 409 here is the version precondition
            if exc.status == 409 and resource_version:
                raise StatusConflictError(
                    f"{namespace}/{name} changed since resourceVersion {resource_version}: status not written"
                ) from exc
            raise
        rv = ((written or {}).get("metadata") or {}).get("resourceVersion") if isinstance(written, dict) else None
        return str(rv) if rv else None

    # -- events --------------------------------------------------------------------------
    def event(self, qwd: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the QwenDeployment (what `kubectl describe qwd` shows)."""
        meta = qwd["metadata"]
        now = dt.datetime.now(dt.UTC)
        WRITES.add("event")
        self.core.create_namespaced_event(
            meta["namespace"],
            client.CoreV1Event(
                metadata=client.V1ObjectMeta(name=f"{meta['name']}.{uuid.uuid4().hex[:12]}"),
                involved_object=client.V1ObjectReference(
                    api_version=API_VERSION,
                    kind=KIND,
                    name=meta["name"],
                    namespace=meta["namespace"],
                    uid=meta.get("uid"),
                    resource_version=meta.get("resourceVersion"),
                ),
                type=type_,
                reason=reason,
                message=message[:1024],
                first_timestamp=now,
                last_timestamp=now,
                count=1,
                source=client.V1EventSource(component="qwen-operator"),
                reporting_component="qwen-operator",
                reporting_instance="qwen-operator",
            ),
        )
