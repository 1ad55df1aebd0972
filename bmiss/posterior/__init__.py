"""Amortized, calibrated inference of motor-unit properties (simulation-based inference).

A network trained on simulated per-fibre MUAPs (:mod:`bmiss.posterior.simulate`) maps a unit's
spike-triggered average, its noise and the grid to a posterior over ``bmiss.conductor.PARAM_NAMES``.
Entry point: :func:`unit_properties` on :func:`averages`; weights: :func:`load`.
"""
from .api import PARAM_NAMES, PARAM_UNITS, PosteriorDomainError, PosteriorModel, UnitPosterior, averages, load, \
    summarise_mixture, unit_properties

__all__ = ["unit_properties", "averages", "load", "UnitPosterior", "PosteriorModel", "PosteriorDomainError",
           "summarise_mixture", "PARAM_NAMES", "PARAM_UNITS"]
