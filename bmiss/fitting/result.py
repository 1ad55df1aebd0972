"""Results of the fits: :class:`SubjectFit` (with its TOML and JSON report) and :class:`UnitFit`."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import anatomy as anatomy_mod
from ..anatomy import Anatomy
from ..conductor import PARAM_NAMES, Conductor
from ..files import provenance, write_json, write_text
from ..templates import Templates
from .bounds import SUBJECT_NAMES, SUBJECT_UNITS

__all__ = ["SubjectFit", "UnitFit", "fitted_anatomy"]


@dataclass
class SubjectFit:
    """A fitted subject model.

    Attributes
    ----------
    anatomy : Anatomy
        The base anatomy with the fitted layers, muscle means/spreads and grid placement
        (``Conductor.from_anatomy(anatomy)`` is the fitted forward model; load it with ``--anatomy``
        after ``save_toml``).
    base : Anatomy
        The anatomy the fit started from (grid = the recording's).
    subject : dict name -> (value, std)
        Subject-level parameters (``SUBJECT_NAMES``) in physical units with Laplace std.
    unit_index : [n] int
        Index of each fitted unit in ``decomposition`` (the blind units kept).
    unit_params, unit_std : [n, 6] float
        Per-unit ``PARAM_NAMES`` (physical units) and their Laplace std.
    unit_gain, unit_shift_ms : [n] float
        Amplitude scale exp(log_gain) and time shift (ms) of each unit's model MUAP.
    templates : Templates
        Observed MUAPs (µV, band-passed) of the fitted units.
    model_muaps : [n, C, T] float32
        Fitted model MUAPs on the templates' window, band-passed like them.
    explained_variance : [n] float
        1 - ||obs - model||² / ||obs||² per unit (channels used).
    overall_ev : float
        The same pooled over all units.
    degenerate : list of str
        Parameters fixed or tied because the data cannot determine them, and strongly correlated pairs.
    timing : dict
        Seconds: decompose, templates, compile, fit, laplace, total.
    """

    anatomy: Anatomy
    base: Anatomy
    subject: dict
    unit_index: np.ndarray
    unit_params: np.ndarray
    unit_std: np.ndarray
    unit_gain: np.ndarray
    unit_shift_ms: np.ndarray
    templates: Templates
    model_muaps: np.ndarray
    explained_variance: np.ndarray
    overall_ev: float
    degenerate: list
    timing: dict
    settings: dict = field(default_factory=dict)
    channels_used: np.ndarray | None = None
    decomposition: object = None
    loss_history: list = field(default_factory=list)
    chi2_reduced: float = float("nan")
    source: str = ""
    model: object = field(default=None, repr=False)  # the fitted _Model (for fit_units)
    theta_subject: object = field(default=None, repr=False)  # unconstrained subject parameters [8]
    window_full: tuple = (0, 0)  # the averages' window (samples re the discharge) before decimation

    def conductor(self, **kw) -> Conductor:
        """The fitted forward model (``Conductor.from_anatomy(self.anatomy, **kw)``)."""
        return Conductor.from_anatomy(self.anatomy, **kw)

    def toml(self) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        head = [f"# Subject anatomy fitted by `bmiss fit` from {self.source or 'a recording'} at {when}",
                f"# base anatomy: {self.base.name} ({self.base.source or 'built in'}); {len(self.unit_index)} units; "
                f"explained variance of the observed MUAPs: {self.overall_ev:.3f}",
                "# fitted: " + ", ".join(f"{k} = {v[0]:.4g} +/- {v[1]:.2g}" for k, v in self.subject.items()),
                f"# MUAP model of the fit: {self.settings.get('forward_model', 'conductor')}"]
        return "\n".join(head) + "\n" + anatomy_mod.to_toml(self.anatomy)

    def save_toml(self, path, *, force: bool = False) -> Path:
        return write_text(path, self.toml(), force=force)

    def report(self) -> dict:
        """JSON-able report: per-unit explained variance, parameters with std, timing, provenance."""
        units = []
        for i in range(len(self.unit_index)):
            u = {"unit": int(self.unit_index[i]), "explained_variance": float(self.explained_variance[i]),
                 "n_discharges": int(self.templates.n_discharges[i]), "gain": float(self.unit_gain[i]),
                 "shift_ms": float(self.unit_shift_ms[i])}
            for j, n in enumerate(PARAM_NAMES):
                u[n] = float(self.unit_params[i, j])
                u[n + "_std"] = float(self.unit_std[i, j])
            units.append(u)
        return {"source": self.source, "base_anatomy": self.base.name, "n_units": len(units),
                "overall_explained_variance": float(self.overall_ev),
                "median_unit_explained_variance": float(np.median(self.explained_variance)) if units else None,
                "chi2_reduced": float(self.chi2_reduced),
                "subject": {k: {"value": float(v[0]), "std": float(v[1]), "unit": SUBJECT_UNITS[SUBJECT_NAMES.index(k)]}
                            for k, v in self.subject.items()},
                "degenerate_or_fixed": self.degenerate, "units": units,
                "window_samples": list(self.templates.window), "band_hz": self.templates.band,
                "timing_s": self.timing, "settings": self.settings, "provenance": provenance()}

    def save_report(self, path, *, force: bool = False, extra: dict | None = None) -> Path:
        doc = self.report()
        if extra:
            doc.update(extra)
        return write_json(path, doc, force=force)


@dataclass
class UnitFit:
    """Per-unit MU properties under a fitted subject model (:func:`fit_units`).

    Attributes
    ----------
    params, std : [n_units, 6] float
        ``PARAM_NAMES`` (mm, mm, ln fibres, mm, m/s, mm) and Laplace std; NaN where not fitted.
    gain, shift_ms : [n_units] float
        Amplitude scale of the model MUAP and its time shift (ms); NaN where not fitted.
    explained_variance : [n_units] float
        1 - ||obs - model||² / ||obs||² of each unit's observed MUAP (NaN where not fitted).
    status : list of str
        ``"fitted"``, ``"few discharges"`` or ``"weak average"`` per unit.
    timing : dict
        Seconds: templates, fit, laplace, total; ``devices``: devices the units were split over.
    """

    params: np.ndarray
    std: np.ndarray
    gain: np.ndarray
    shift_ms: np.ndarray
    explained_variance: np.ndarray
    status: list
    timing: dict


def fitted_anatomy(base: Anatomy, subject: dict, up: np.ndarray) -> Anatomy:
    """The base anatomy with the fitted values (layers, muscle means/spreads, grid placement)."""
    v = {k: val for k, (val, _) in subject.items()}
    L = base.layers
    layers = replace(L, fat_thickness_mm=round(v["fat_mm"], 4), skin_thickness_mm=round(v["skin_mm"], 4),
                     muscle_conductivity_longitudinal=round(min(v["anisotropy"] * L.muscle_conductivity_radial, 5.0), 5))
    lengths, ivs, cvs = up[:, 5], up[:, 3], up[:, 4]
    Lm = float(np.mean(lengths))
    izf = ivs / lengths + 0.5
    m = base.muscle
    muscle = replace(m, fibre_length_mm=round(float(np.clip(Lm, 20.0, 250.0)), 3),
                     fibre_length_spread_mm=round(float(np.clip(np.std(lengths), 0.0, 50.0)), 3),
                     iz_fraction=round(float(np.clip(np.mean(izf), 0.2, 0.8)), 4),
                     iz_spread_fraction=round(float(np.clip(np.std(izf) * 2, 0.0, 0.3)), 4),
                     cv_mean_m_s=round(float(np.clip(np.mean(cvs), 2.0, 7.0)), 4),
                     cv_std_m_s=round(float(np.clip(np.std(cvs), 0.0, 1.5)), 4))
    g = base.grid
    rot = ((g.rotation_deg + v["rotation_deg"] + 180.0) % 360.0) - 180.0
    grid = replace(g, rotation_deg=round(float(rot), 4), centre_z_mm=round(float(g.centre_z_mm + v["dz_mm"]), 4))
    a = replace(base, name=f"{base.name}_subject", description=f"{base.description} (fitted subject)",
                layers=layers, muscle=muscle, grid=grid, source="", text="")
    # The anatomy loader requires the grid over the muscle. The muscle width is not fitted: widen it
    # as far as a turned grid needs, so the subject file loads with --anatomy.
    import tomllib

    for _ in range(2):
        try:
            anatomy_mod.from_dict(tomllib.loads(anatomy_mod.to_toml(a)), source="fitted subject")
            break
        except anatomy_mod.AnatomyError as e:
            if "wide" not in str(e):
                raise
            xz, _ = a.grid.electrode_positions()
            need = 2 * (np.abs(xz[:, 0]).max() - a.grid.ied_mm) + 1.0
            a = replace(a, muscle=replace(a.muscle, width_mm=round(float(max(need, a.muscle.width_mm)), 2)))
    return a


