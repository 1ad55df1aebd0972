"""Filter proposers: FastICA fixed point (``cbss``), true-MUAP oracle, model-informed (``bmiss``)."""
from .base import AbstractProposer, Done, Proposal
from .fastica import FastICA
from .model import ModelProposer
from .oracle import Oracle

__all__ = ["AbstractProposer", "Proposal", "Done", "FastICA", "Oracle", "ModelProposer"]
