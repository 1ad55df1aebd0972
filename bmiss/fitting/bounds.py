"""Bounds of the fitted parameters and the sigmoid map between physical and unconstrained values.

Subject-level parameters (:data:`SUBJECT_NAMES`, units :data:`SUBJECT_UNITS`) are shared by every
unit; per-unit parameters are ``bmiss.conductor.PARAM_NAMES`` plus ``log_gain`` and ``shift_ms``
(:data:`UNIT_FIT_NAMES`). Every parameter is bounded by a sigmoid map to a physiological range
wider than the base anatomy's nominal values.
"""
from __future__ import annotations

import math

import jax
import numpy as np

from ..anatomy import Anatomy

SUBJECT_NAMES = ("fat_mm", "skin_mm", "anisotropy", "rotation_deg", "dz_mm", "length_pop_mm", "cv_pop_m_s",
                 "izf_pop")
SUBJECT_UNITS = ("mm", "mm", "ratio", "deg", "mm", "mm", "m/s", "fraction of length")

__all__ = ["SUBJECT_NAMES", "SUBJECT_UNITS", "subject_bounds", "unit_bounds", "to_phys", "to_unc"]


def subject_bounds(base: Anatomy) -> dict[str, tuple[float, float]]:
    """Physiological bounds of the subject-level parameters (wider than the base's nominal values)."""
    L = base.muscle.fibre_length_mm
    return {
        "fat_mm": (0.2, max(12.0, 2 * base.layers.fat_thickness_mm)),
        "skin_mm": (0.3, 3.0),
        "anisotropy": (1.5, 12.0),
        "rotation_deg": (-25.0, 25.0),
        "dz_mm": (-40.0, 40.0),
        "length_pop_mm": (20.0, max(250.0, 1.5 * L)),
        "cv_pop_m_s": (2.5, 6.5),
        "izf_pop": (0.2, 0.8),
    }


def unit_bounds(base: Anatomy) -> dict[str, tuple[float, float]]:
    """Bounds of the per-unit parameters. depth is below the fitted muscle surface; iz a fraction."""
    m = base.muscle
    return {
        "depth_below_mm": (0.3, m.thickness_mm + 5.0),
        "x_mm": (-(m.width_mm / 2 + 15.0), m.width_mm / 2 + 15.0),
        "log_fibres": (math.log(5.0), math.log(3000.0)),
        "iz_fraction": (0.1, 0.9),
        "cv_m_s": (2.0, 7.0),
        "length_mm": (20.0, 260.0),
        "log_gain": (-2.5, 2.5),
        "shift_ms": (-15.0, 15.0),
    }


def to_phys(u, lo, hi):
    return lo + (hi - lo) * jax.nn.sigmoid(u)


def to_unc(v, lo, hi):
    f = np.clip((np.asarray(v, np.float64) - lo) / (hi - lo), 1e-4, 1 - 1e-4)
    return np.log(f / (1 - f)).astype(np.float32)


