"""Decomposition methods: classic convolutive BSS (``decompose_cbss``) and the true-MUAP
oracle upper bound (``decompose_oracle``)."""
from .cbss import decompose_cbss
from .oracle import decompose_oracle

__all__ = ["decompose_cbss", "decompose_oracle"]
