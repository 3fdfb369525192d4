"""The sandbox's LWS webhook rewrite: upstream's Service-backed webhooks pointed at the local controller."""

from __future__ import annotations

import base64
from typing import Any

from qwen_operator.sandbox.lws import POD_SELECTOR, webhook_configurations

MANIFEST: list[dict[str, Any]] = [
    {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "mutating-webhook-configuration"},
        "webhooks": [
            {
                "name": "mpod.kb.io",
                "clientConfig": {
                    "service": {"name": "webhook-service", "namespace": "system", "path": "/mutate--v1-pod"}
                },
                "rules": [{"operations": ["CREATE"], "resources": ["pods"], "apiGroups": [""], "apiVersions": ["v1"]}],
            },
            {
                "name": "mleaderworkerset.kb.io",
                "clientConfig": {"service": {"name": "webhook-service", "namespace": "system", "path": "/mutate-lws"}},
                "rules": [{"resources": ["leaderworkersets"], "apiGroups": ["leaderworkerset.x-k8s.io"]}],
                "timeoutSeconds": 3,
            },
        ],
    },
    {},  # an empty YAML document between the two
    {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "validating-webhook-configuration"},
        "webhooks": [
            {
                "name": "vpod.kb.io",
                "clientConfig": {
                    "service": {"name": "webhook-service", "namespace": "system", "path": "/validate--v1-pod"}
                },
                "rules": [{"resources": ["pods"]}],
            }
        ],
    },
]


def test_service_references_become_local_urls_with_our_ca_and_pod_hooks_only_see_lws_pods() -> None:
    out = webhook_configurations(MANIFEST, "https://127.0.0.1:9443/", b"PEM")
    assert [d["kind"] for d in out] == ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
    assert [d["metadata"]["name"] for d in out] == ["qwen-sandbox-lws-mutating", "qwen-sandbox-lws-validating"]
    pod, lws = out[0]["webhooks"]
    assert pod["clientConfig"] == {
        "url": "https://127.0.0.1:9443/mutate--v1-pod",
        "caBundle": base64.b64encode(b"PEM").decode(),
    }
    assert pod["objectSelector"] == POD_SELECTOR and pod["timeoutSeconds"] == 10
    assert "objectSelector" not in lws and lws["timeoutSeconds"] == 3  # upstream's own value is kept
    assert out[1]["webhooks"][0]["clientConfig"]["url"] == "https://127.0.0.1:9443/validate--v1-pod"
    # the upstream documents are left as they were (a copy is rewritten)
    assert "service" in MANIFEST[0]["webhooks"][0]["clientConfig"]
