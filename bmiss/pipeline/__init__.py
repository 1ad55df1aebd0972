"""The decomposition pipeline (:mod:`bmiss.pipeline.run`) and its three methods.

Every method: ``prepare -> search -> [deconvolution] -> finalize``; the search is
``propose -> refine -> accept -> dedupe -> peel`` until the proposer is exhausted. The default
``bmiss``: ``prepare -> blind search -> subject fit -> model search -> deconvolution -> unit
properties -> finalize``.

One module per stage: :mod:`.prepare`, :mod:`.search` (with :mod:`.proposers`, :mod:`.refine`,
:mod:`.spikes`, :mod:`.accept`, :mod:`.dedupe`, :mod:`.peel`), :mod:`.subject`,
:mod:`.deconvolution`, :mod:`.properties`, :mod:`.finalize`; :mod:`.settings` holds the frozen,
validated settings. Methods differ only in the proposer: :func:`decompose_cbss` (FastICA),
:func:`decompose_oracle` (true MUAPs), :func:`decompose_bmiss` (forward model).
"""
from __future__ import annotations

import dataclasses

from ..io import Decomposition
from .proposers import FastICA, ModelProposer, Oracle
from .proposers.model import resolve_anatomy
from .run import run, run_bmiss
from .settings import METHOD_RULES, FastICASettings, ModelSettings, OracleSettings, Rules, SettingsError, resolve

__all__ = ["decompose_cbss", "decompose_oracle", "decompose_bmiss", "run", "run_bmiss", "Rules", "FastICASettings",
           "OracleSettings", "ModelSettings", "resolve"]


def decompose_cbss(emg, fs: float, *, rules: Rules | None = None, settings: FastICASettings | None = None,
                   prepared=None, progress: bool = True, **kw) -> Decomposition:
    """Convolutive BSS (FastICA fixed point + the shared stages).

    Parameters
    ----------
    emg : [n_channels, n_samples] µV; bad channels are excluded automatically.
    fs : sampling rate, Hz.
    rules, settings : :class:`Rules` and :class:`FastICASettings` (defaults: ``METHOD_RULES["cbss"]``);
        keyword overrides (``n_iter=``, ``sil_threshold=``, ``R=``, ...) are applied on top.

    Examples
    --------
    >>> dec = decompose_cbss(rec.emg, rec.fs, n_iter=30)  # doctest: +SKIP
    """
    rules, settings = resolve("cbss", rules, settings, **kw)
    return run(emg, fs, FastICA(settings=settings), rules, method="cbss", batch=min(settings.batch, settings.n_iter),
               prepared=prepared, progress=progress, total=settings.n_iter)


def decompose_oracle(emg, fs: float, true_muaps, *, rules: Rules | None = None,
                     settings: OracleSettings | None = None, prepared=None, progress: bool = False,
                     **kw) -> Decomposition:
    """One unit per true MU from its true-MUAP filter (upper bound; simulations only).

    ``true_muaps`` [n_units, n_channels, T] µV, starting at the discharge, channels of ``emg``.
    """
    rules, settings = resolve("oracle", rules, settings, **kw)
    return run(emg, fs, Oracle(settings=settings, true_muaps=true_muaps), rules, method="oracle", batch=16,
               prepared=prepared, progress=progress, total=len(true_muaps))


def decompose_bmiss(rec, *, rules: Rules | None = None, settings: ModelSettings | None = None,
                    init: str = "blind", progress: bool = True, **kw) -> Decomposition:
    """Model-informed decomposition of a :class:`~bmiss.io.Recording`.

    ``init="blind"`` (default): the named stages of :func:`bmiss.pipeline.run.run_bmiss`: blind
    search (FastICA, the ``cbss`` rules with bmiss's CoV-of-ISI limit; ``settings.blind``) ->
    subject fit of the forward model to the blind units' MUAPs (``settings.subject_fit``) ->
    model search within the fitted model on the data with the blind units peeled -> sparse
    deconvolution -> every unit's properties under the subject model (``settings.unit_fit``).
    ``init="model"``: the model search alone, within the anatomy as given.
    Units carry MU properties (``params``); ``meta["subject_model"]`` records the fit.

    Examples
    --------
    >>> dec = decompose_bmiss(rec, n_rounds=4, **{"subject_fit.n_starts": 1})  # doctest: +SKIP
    """
    from .properties import unit_properties

    if init not in ("blind", "model"):
        raise SettingsError(f"init must be 'blind' or 'model', got {init!r}")
    rules, settings = resolve("bmiss", rules, settings, **kw)
    a = resolve_anatomy(rec, settings.anatomy, settings.grid, settings.ied_mm)
    if init == "model":
        def props(units):  # the search's own parameters: no subject model to fit them under
            return unit_properties(rec, units, None, settings.unit_fit, seed=settings.seed, anatomy=a)

        return run(rec.emg, rec.fs, ModelProposer(settings=settings, anatomy=a), rules, method="bmiss",
                   batch=settings.n_starts, progress=progress, properties=props)
    blind = dataclasses.replace(settings.blind, seed=settings.seed)
    # The blind search keeps the cbss rules (flip, keep, peel floor; no deconvolution of its own) with
    # bmiss's acceptance rules, so --setting sil_threshold/min_spikes/max_cov apply to both searches
    # (defaults: the same SIL 0.9 and 10 discharges as cbss) and bmiss's CoV-of-ISI limit: every
    # false cbss unit on four mismatched recordings had CoV 0.66-0.94, every found one 0.13-0.29
    # (results/diag_blind_cov.json).
    blind_rules = METHOD_RULES["cbss"].replace(R=rules.R, band=rules.band, max_cov=rules.max_cov,
                                               sil_threshold=rules.sil_threshold, min_spikes=rules.min_spikes,
                                               min_distance_ms=rules.min_distance_ms)
    return run_bmiss(rec, blind=FastICA(settings=blind), blind_rules=blind_rules,
                     model=lambda anatomy: ModelProposer(settings=settings, anatomy=anatomy), rules=rules,
                     base_anatomy=a, settings=settings, progress=progress)
