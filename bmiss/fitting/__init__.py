"""Subject-specific fitting of the forward model (``bmiss.fit`` is the function users call).

* :func:`fit_subject` (:mod:`.subject`): the subject-level model (tissue, fibre geometry, grid
  placement) and the fitted units' parameters from a decomposition's blind units;
* :func:`fit_units` (:mod:`.units`): every unit's properties under a fitted subject;
* :mod:`.bounds` (parameter names, units, bounds), :mod:`.model` (the differentiable model, loss,
  optimisers), :mod:`.starts` (unit selection, starting points), :mod:`.uncertainty` (Laplace),
  :mod:`.result` (:class:`SubjectFit`, :class:`UnitFit`, TOML and JSON report),
  :mod:`.settings` (:class:`SubjectFitSettings`, :class:`UnitFitSettings`).
"""
from .bounds import SUBJECT_NAMES, SUBJECT_UNITS, subject_bounds, unit_bounds
from .result import SubjectFit, UnitFit
from .settings import SubjectFitSettings, UnitFitSettings
from .starts import select_units
from .subject import fit_subject, with_network
from .units import fit_units

__all__ = ["fit_subject", "with_network", "fit_units", "SubjectFit", "UnitFit", "SubjectFitSettings", "UnitFitSettings",
           "select_units", "subject_bounds", "unit_bounds", "SUBJECT_NAMES", "SUBJECT_UNITS"]
