"""The decomposition pipeline (see :mod:`bmiss.pipeline.run`) and its three methods.

    prepare -> propose filters -> source -> spikes -> refine -> accept -> dedupe -> peel
            -> (repeat) -> finalize

One module per stage: :mod:`.prepare`, :mod:`.proposers`, :mod:`.spikes`, :mod:`.refine`
(source, spikes and refinement of a pool of candidates on device), :mod:`.accept`,
:mod:`.dedupe`, :mod:`.peel`, :mod:`.finalize`; :mod:`.settings` holds the frozen settings.
Methods differ only in the proposer: :func:`decompose_cbss` (FastICA), :func:`decompose_oracle`
(true MUAPs), :func:`decompose_bmiss` (forward model).
"""
from __future__ import annotations

from ..io import Decomposition
from .proposers import FastICA, ModelProposer, Oracle
from .proposers.model import resolve_anatomy
from .run import run
from .settings import FastICASettings, ModelSettings, OracleSettings, Rules, resolve

__all__ = ["decompose_cbss", "decompose_oracle", "decompose_bmiss", "run", "Rules", "FastICASettings",
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
                    progress: bool = True, **kw) -> Decomposition:
    """Model-informed decomposition of a :class:`~bmiss.io.Recording` (filters proposed by the
    forward model, see :mod:`.proposers.model`); units carry fitted MU properties (``params``)."""
    rules, settings = resolve("bmiss", rules, settings, **kw)
    a = resolve_anatomy(rec, settings.anatomy, settings.grid, settings.ied_mm)
    return run(rec.emg, rec.fs, ModelProposer(settings=settings, anatomy=a), rules, method="bmiss",
               batch=settings.n_starts, progress=progress)
