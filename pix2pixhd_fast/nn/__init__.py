"""Drop-in modules built on the fused operators, and the converter for existing models."""

from .convert import ConversionReport, convert_model, get_edges, instance_avg_pool
from .modules import InstanceAvgPool, InstanceBoundary, InstanceNormAct, InstanceNormReLU

__all__ = [
    "ConversionReport",
    "InstanceAvgPool",
    "InstanceBoundary",
    "InstanceNormAct",
    "InstanceNormReLU",
    "convert_model",
    "get_edges",
    "instance_avg_pool",
]
