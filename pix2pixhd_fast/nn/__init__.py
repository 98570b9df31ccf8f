"""Drop-in modules built on the fused operators."""

from .modules import InstanceAvgPool, InstanceBoundary, InstanceNormAct, InstanceNormReLU

__all__ = ["InstanceAvgPool", "InstanceBoundary", "InstanceNormAct", "InstanceNormReLU"]
