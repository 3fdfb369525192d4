"""Deterministic names, labels and selectors of everything a QwenDeployment owns.

Names are a pure function of the resource name and GPU type, so a restarted operator
finds (and server-side applies over) what it created before instead of duplicating it.
Selectors use only labels that never change for the life of a pool: a Deployment's
selector is immutable, so the model version lives in a separate template label.
"""

from __future__ import annotations

import hashlib
import re

from ..api import GROUP

MANAGED_BY = "qwen-operator"
APP_NAME = "qwen"
COMPONENT = "server"
ROUTER_COMPONENT = "router"
#: A canary's pods: not ``server``, so no Service, PDB, InferencePool or scale selector over
#: the server pods reaches one by accident; only the router (its canary rule) and the smoke test do.
CANARY_COMPONENT = "canary"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_DEPLOYMENT = f"{GROUP}/deployment"
LABEL_POOL = f"{GROUP}/pool"
LABEL_MODEL_VERSION = f"{GROUP}/model-version"
ANNOTATION_MODEL_VERSION = f"{GROUP}/model-version"
ANNOTATION_MODEL = f"{GROUP}/model"

_MAX_LABEL = 63


def dns_label(text: str, limit: int = _MAX_LABEL) -> str:
    """Lower-case DNS-1123 label from ``text``; a hash suffix keeps truncated names unique."""
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"
    if len(slug) <= limit:
        return slug
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{slug[: limit - 9].rstrip('-')}-{digest}"


def label_value(text: str) -> str:
    """A valid label value (<= 63 chars of [A-Za-z0-9._-], alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    if len(value) > _MAX_LABEL:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        value = f"{value[: _MAX_LABEL - 9].rstrip('-._')}-{digest}"
    return value


def pool_slug(gpu_type: str) -> str:
    """``A100-80GB`` -> ``a100-80gb`` (the pool label and Deployment name suffix)."""
    return dns_label(gpu_type, 20)


def pool_deployment_name(name: str, gpu_type: str) -> str:
    """``<qwd>-<gpu-lowercase>``, e.g. ``chat-a10g``."""
    return dns_label(f"{name}-{pool_slug(gpu_type)}")


def service_name(name: str) -> str:
    return dns_label(name)


def servers_service_name(name: str) -> str:
    """``<qwd>-servers``: the Service over the server pods when the router fronts them."""
    return dns_label(f"{name}-servers")


def router_name(name: str) -> str:
    """``<qwd>-router``: the router's Deployment, PDB, ServiceAccount, Role and RoleBinding."""
    return dns_label(f"{name}-router")


def common_labels(name: str, component: str = COMPONENT) -> dict[str, str]:
    """Labels on every object a QwenDeployment owns (``component``: server, or router for the data plane)."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: label_value(name),
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_DEPLOYMENT: label_value(name),
    }


def server_selector(name: str) -> dict[str, str]:
    """Selects every server pod of the QwenDeployment, across pools (Service, PDB, scale)."""
    return {LABEL_DEPLOYMENT: label_value(name), LABEL_COMPONENT: COMPONENT}


def serving_selector_string(name: str) -> str:
    """The label selector (set-based) over the server pods of every pool and of a canary: what the
    router watches (it routes a canary pod only by its canary rule)."""
    return f"{LABEL_COMPONENT} in ({CANARY_COMPONENT},{COMPONENT}),{LABEL_DEPLOYMENT}={label_value(name)}"


def router_selector(name: str) -> dict[str, str]:
    """Selects the router pods; disjoint from :func:`server_selector` (the component label differs)."""
    return {LABEL_DEPLOYMENT: label_value(name), LABEL_COMPONENT: ROUTER_COMPONENT}


def pool_selector(name: str, gpu_type: str) -> dict[str, str]:
    """Selects the pods of one pool (a Deployment's immutable selector)."""
    return {**server_selector(name), LABEL_POOL: pool_slug(gpu_type)}


def selector_string(name: str) -> str:
    """``status.selector`` for the scale subresource, e.g. ``app.kubernetes.io/component=server,...``."""
    return ",".join(f"{k}={v}" for k, v in sorted(server_selector(name).items()))
