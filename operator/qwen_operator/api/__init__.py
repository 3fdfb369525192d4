"""The QwenDeployment API: typed spec/status models, CRD generation and semantic checks.

The pydantic models in :mod:`.spec` and :mod:`.status` are the one source of truth; the
CRD in ``crds/`` is generated from them by :mod:`.crdgen`.
"""

from .spec import (
    ModelCache,
    ModelSpec,
    PlacementSpec,
    QwenDeploymentSpec,
    ResourceRequests,
    RolloutSpec,
    RoutingSpec,
    RuntimeSpec,
    ScalingSpec,
)
from .status import (
    AutoscalerStatus,
    Condition,
    ModelStatus,
    PoolStatus,
    QwenDeploymentStatus,
    pool_summary,
    ready_summary,
)
from .validate import Problem, validate_spec

GROUP = "serving.qwenops.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "QwenDeployment"
PLURAL = "qwendeployments"

__all__ = [
    "API_VERSION",
    "AutoscalerStatus",
    "Condition",
    "GROUP",
    "KIND",
    "ModelCache",
    "ModelSpec",
    "ModelStatus",
    "PLURAL",
    "PlacementSpec",
    "PoolStatus",
    "Problem",
    "QwenDeploymentSpec",
    "QwenDeploymentStatus",
    "ResourceRequests",
    "RolloutSpec",
    "RoutingSpec",
    "RuntimeSpec",
    "ScalingSpec",
    "VERSION",
    "pool_summary",
    "ready_summary",
    "validate_spec",
]
