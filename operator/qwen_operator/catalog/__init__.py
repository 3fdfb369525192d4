"""GPU and Qwen model catalogs (pure data), overridable from the operator config."""

from .config import Catalog, CatalogError, load_catalog
from .gpus import DEFAULT_GPUS, GB, GPUType, gpu_by_product_label, resolve_gpu_name
from .models import BYTES_PER_PARAM, DEFAULT_MODELS, ENGINES, QUANTIZATIONS, QwenModel, resolve_model_name

__all__ = [
    "BYTES_PER_PARAM",
    "Catalog",
    "CatalogError",
    "DEFAULT_GPUS",
    "DEFAULT_MODELS",
    "ENGINES",
    "GB",
    "GPUType",
    "QUANTIZATIONS",
    "QwenModel",
    "gpu_by_product_label",
    "load_catalog",
    "resolve_gpu_name",
    "resolve_model_name",
]
