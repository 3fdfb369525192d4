"""GPU types the operator can place Qwen replicas on.

One entry per GPU type: the facts placement and the replica performance model need.
Prices are defaults (on-demand cloud list prices per GPU-hour, divided per GPU); cluster
operators override them, and add GPU types, through the operator config
(``catalog.overrides``) without a code change.

Sources:
- memory / bandwidth: NVIDIA datasheets (A10: 24 GB GDDR6, 600 GB/s; L40S: 48 GB GDDR6,
  864 GB/s; A100 SXM4 40 GB HBM2 1,555 GB/s and 80 GB HBM2e 2,039 GB/s).
- dense BF16 tensor FLOP/s: A100 312 TF and L40S 362 TF (datasheets, without sparsity);
  A10G: AWS' variant of the A10 at lower clocks, ~70 TF dense BF16 (AWS g5 docs quote
  about half of the A10's 125 TF).
- $/GPU-h: AWS on-demand us-east-1 (g5.xlarge 1.006; g6e.xlarge 1.861; p4d.24xlarge
  32.77/8 = 4.096; p4de.24xlarge 40.96/8 = 5.12), as in the project's design brief.
- product labels: GPU Feature Discovery's ``nvidia.com/gpu.product`` is the ``nvidia-smi`` name with
  spaces turned into dashes (``NVIDIA A100 80GB PCIe`` -> ``NVIDIA-A100-80GB-PCIe``). The A100 PCIe
  cards are the same GPU as the SXM4 modules at a lower power limit (80 GB PCIe: 1,935 GB/s instead
  of 2,039 GB/s) and without an NVLink switch; the catalog counts them as the same type (an admin
  who wants them apart defines a GPU type of their own for the PCIe label). Operator config
  ``gpuProductLabels`` adds further labels per type (:func:`~.config.load_catalog`).
- ``internode_bytes_per_s`` (operator config ``interNodeGbps``): network bandwidth of one node of
  the type's largest (8-GPU) instance, what a replica spanning nodes (pipeline parallelism, one
  stage per node) moves its activations over. AWS instance specifications: p4d.24xlarge and
  p4de.24xlarge (8x A100) 400 Gbps (4x 100 Gbps EFA); g6e.48xlarge (8x L40S) 400 Gbps ("G6e
  instances support up to four network cards and can deliver up to 400 Gbps", EC2 User Guide,
  "Maximize network bandwidth on accelerated computing instances with EFA"); g5.48xlarge (8x A10G)
  100 Gbps (EC2 accelerated computing instances: "up to 100 Gbps of network bandwidth"; AWS Batch
  GPU instance table: g5.48xlarge 100 Gbps). 0 means not stated: the planner then plans no
  replica across nodes on that type.
- ``fp8_native``: FP8 tensor cores (Ada / Hopper). On Ampere (A10G, A100) TGI still
  serves fp8 weights through its Marlin weight-only kernels: memory savings are the same,
  compute runs in bf16.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

GB = 1_000_000_000
#: Bytes/s in one Gbit/s (network bandwidths are quoted in Gbps).
GBPS = 1e9 / 8


@dataclass(frozen=True)
class GPUType:
    """One GPU model as the scheduler and the performance model see it."""

    name: str  # catalog key used in QwenDeployment.spec.placement.gpuTypes, e.g. "A10G"
    product_label: str  # value of the node label nvidia.com/gpu.product
    memory_bytes: int
    bandwidth_bytes_per_s: float
    bf16_flops: float
    price_per_gpu_hour: float
    max_gpus_per_node: int = 8
    fp8_native: bool = False
    interconnect: str = "pcie"  # "pcie" or "nvlink": tensor-parallel all-reduce cost
    # further nvidia.com/gpu.product values of the same type (e.g. the PCIe variant of an SXM4 card)
    extra_product_labels: tuple[str, ...] = ()
    # network bandwidth of one node (bytes/s) between pipeline stages on different nodes; 0: unknown
    internode_bytes_per_s: float = 0.0

    @property
    def product_labels(self) -> tuple[str, ...]:
        """Every ``nvidia.com/gpu.product`` value a node of this type may carry, the primary one first."""
        return (self.product_label, *(p for p in self.extra_product_labels if p != self.product_label))

    @property
    def memory_gb(self) -> float:
        return self.memory_bytes / GB

    def with_price(self, price: float) -> GPUType:
        return replace(self, price_per_gpu_hour=price)


DEFAULT_GPUS: dict[str, GPUType] = {
    g.name: g
    for g in (
        GPUType(
            name="A10G",
            product_label="NVIDIA-A10G",
            memory_bytes=24 * GB,
            bandwidth_bytes_per_s=600 * GB,
            bf16_flops=70e12,
            price_per_gpu_hour=1.006,
            max_gpus_per_node=8,
            internode_bytes_per_s=100 * GBPS,
        ),
        GPUType(
            name="L40S",
            product_label="NVIDIA-L40S",
            memory_bytes=48 * GB,
            bandwidth_bytes_per_s=864 * GB,
            bf16_flops=362e12,
            price_per_gpu_hour=1.861,
            max_gpus_per_node=8,
            internode_bytes_per_s=400 * GBPS,
            fp8_native=True,
        ),
        GPUType(
            name="A100-40GB",
            product_label="NVIDIA-A100-SXM4-40GB",
            extra_product_labels=("NVIDIA-A100-PCIE-40GB",),
            memory_bytes=40 * GB,
            bandwidth_bytes_per_s=1555 * GB,
            bf16_flops=312e12,
            price_per_gpu_hour=4.096,
            max_gpus_per_node=8,
            internode_bytes_per_s=400 * GBPS,
            interconnect="nvlink",
        ),
        GPUType(
            name="A100-80GB",
            product_label="NVIDIA-A100-SXM4-80GB",
            extra_product_labels=("NVIDIA-A100-80GB-PCIe",),
            memory_bytes=80 * GB,
            bandwidth_bytes_per_s=2039 * GB,
            bf16_flops=312e12,
            price_per_gpu_hour=5.12,
            max_gpus_per_node=8,
            internode_bytes_per_s=400 * GBPS,
            interconnect="nvlink",
        ),
    )
}

#: Accepted spellings on the command line (``--gpus a10g=4``) -> catalog key.
ALIASES: dict[str, str] = {
    "a10g": "A10G",
    "l40s": "L40S",
    "a100-40gb": "A100-40GB",
    "a100-80gb": "A100-80GB",
    "a100": "A100-80GB",
}


def resolve_gpu_name(name: str, known: dict[str, GPUType] | None = None) -> str:
    """Map a user spelling (``a10g``, ``A10G``) to the catalog key, or raise ``KeyError``."""
    gpus = known if known is not None else DEFAULT_GPUS
    if name in gpus:
        return name
    lowered = {k.lower(): k for k in gpus}
    if name.lower() in lowered:
        return lowered[name.lower()]
    if name.lower() in ALIASES and ALIASES[name.lower()] in gpus:
        return ALIASES[name.lower()]
    raise KeyError(name)


def gpu_by_product_label(label: str, known: dict[str, GPUType] | None = None) -> GPUType | None:
    """The catalog entry one of whose node label values is ``label`` (None if unknown)."""
    for gpu in (known if known is not None else DEFAULT_GPUS).values():
        if label in gpu.product_labels:
            return gpu
    return None
