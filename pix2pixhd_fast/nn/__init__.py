"""Drop-in modules built on the fused operators, and the converter for existing models."""

from .convert import ConversionReport, convert_model, get_edges, instance_avg_pool
from .modules import InstanceAvgPool, InstanceBoundary, InstanceNormAct, InstanceNormActPad, InstanceNormReLU

__all__ = [
    "ConversionReport",
    "InstanceAvgPool",
    "InstanceBoundary",
    "InstanceNormAct",
    "InstanceNormActPad",
    "InstanceNormReLU",
    "convert_model",
    "get_edges",
    "instance_avg_pool",
]
