"""Settings of a decomposition: one frozen dataclass for the shared pipeline rules, one per proposer.

Every class derives from :class:`bmiss.config.Settings`: each field is checked for type and range
on construction (a bad value is refused with its allowed range, never stored). Nested groups
(``ModelSettings.subject_fit``, ``.unit_fit``, ``.blind``, ``Rules.deconvolve``) are reached with
dotted keys (``subject_fit.n_starts=2``). :func:`resolve` maps keyword overrides (API ``**kw``,
CLI ``--setting``) onto them and rejects unknown names with a suggestion; :func:`parse_settings`
parses the CLI's text by each field's type. The decomposition's ``meta["settings"]`` records
the full resolved settings (:func:`as_dict`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import Settings, as_dict, parse_value, setting
from ..deconvolve import DeconvolveSettings
from ..errors import SettingsError, did_you_mean
from ..filters import DEFAULT_BAND
from ..fitting.settings import SubjectFitSettings, UnitFitSettings

__all__ = ["SettingsError", "Rules", "FastICASettings", "OracleSettings", "ModelSettings", "DeconvolveSettings",
           "SubjectFitSettings", "UnitFitSettings", "METHOD_RULES", "PROPOSER_SETTINGS", "resolve", "as_dict",
           "parse_settings"]


@dataclass(frozen=True)
class Rules(Settings):
    """Rules of the shared stages (prepare, spikes, refine, accept, dedupe, peel, finalize).

    Attributes
    ----------
    R : extension factor; ``None`` = ``round(1000 / n_good_channels)`` (16 for 64 channels).
    band : band-pass corners, Hz (``None``: no filter).
    min_distance_ms : minimum distance between two discharges of a unit, ms (spikes stage).
    flip : spikes stage flips a source whose skewness is negative (blind filters have no sign);
        model and oracle filters have a known sign (False).
    refine : CKC refinement (``w <- mean whitened sample at the discharges`` while the CoV of
        ISI decreases), at most ``max_refine_iter`` updates.
    sil_threshold, min_spikes : accept a unit when ``SIL >= sil_threshold`` and it has
        ``>= min_spikes`` discharges.  ``accept_all``: keep every candidate (oracle).
    max_cov : also refuse a unit whose CoV of ISI exceeds this (``None``: no limit).
    dedupe : drop duplicates: a unit sharing ``>= dup_threshold`` of its discharges (within
        ``±dup_tol_ms`` after the best lag within ``±dup_max_lag_ms``) with an accepted unit.
    keep : which of a duplicate group stays: ``"cov"`` (lowest CoV of ISI, then highest SIL)
        or ``"sil"`` (highest SIL).
    peel : subtract each accepted unit's spike-triggered average of the whitened data at its
        discharges (lags ``±(R + peel_ms)``), so later candidates cannot re-find it at
        another extension lag.
    peel_ms : MUAP duration covered by the peel-off window, ms.
    peel_floor : subtract only the lags whose STA energy exceeds this multiple of the noise
        floor of a mean of the unit's discharges (0: every lag).
    retime : replace an accepted unit's filter by its best-lag filter (largest-energy row of
        its spike-triggered average) when that one also passes acceptance: sharper peaks.
    align : discharge times on the onset of the unit's spike-triggered MUAP (``"onset"``), or
        on the lag the proposer knows (``"proposer"``, oracle).
    deconvolve : after the search, re-estimate every unit's discharges by sparse deconvolution
        of the EMG with the units' spike-triggered MUAPs (:func:`bmiss.deconvolve.deconvolve`:
        non-negative, refractory, threshold from the noise level): a group of settings
        (:class:`~bmiss.deconvolve.DeconvolveSettings`; ``deconvolve=false`` is short for
        ``deconvolve.enabled=false``); off by default until the benchmark shows it helps
        (``experiments/bench_deconvolve.py``); on for ``bmiss``.
    """

    R: int | None = setting(None, lo=1, hi=256)
    band: tuple[float, float] | None = setting(DEFAULT_BAND, lo=0.0, lo_open=True)
    min_distance_ms: float = setting(20.0, lo=0.0, lo_open=True, hi=1000.0)
    flip: bool = True
    refine: bool = True
    max_refine_iter: int = setting(10, lo=0, hi=1000)
    sil_threshold: float = setting(0.9, lo=0.0, hi=1.0)
    min_spikes: int = setting(10, lo=2)
    max_cov: float | None = setting(None, lo=0.0, lo_open=True)
    accept_all: bool = False
    dedupe: bool = True
    dup_threshold: float = setting(0.3, lo=0.0, lo_open=True, hi=1.0)
    dup_tol_ms: float = setting(0.5, lo=0.0, hi=50.0)
    dup_max_lag_ms: float = setting(25.0, lo=0.0, hi=1000.0)
    keep: str = setting("cov", choices=("cov", "sil"))
    peel: bool = True
    peel_ms: float = setting(50.0, lo=0.0, hi=1000.0)
    peel_floor: float = setting(0.0, lo=0.0)
    retime: bool = True
    align: str = setting("onset", choices=("onset", "proposer"))
    deconvolve: DeconvolveSettings = setting(default_factory=lambda: DeconvolveSettings(enabled=False))

    def validate(self):
        if self.band is not None and not self.band[0] < self.band[1]:
            raise SettingsError(f"band = {self.band}: needs low < high (Hz), e.g. band=20,500")


@dataclass(frozen=True)
class FastICASettings(Settings):
    """Convolutive FastICA (Negro et al. 2016), the ``cbss`` proposer.

    n_iter : candidate filters (outer iterations).
    contrast : ``"skew"`` (G = x^3/3), ``"logcosh"`` or ``"kurtosis"`` (G = x^4/4).
    max_fp_iter, tol : fixed point stops at ``|1 - |w_new' w_old|| < tol``, a period-2 cycle,
        or ``max_fp_iter`` iterations.
    batch : candidates iterated together (one read of the data serves all of them).
    deflate_rejected : also deflate the converged filters of rejected candidates.
    signal_subspace : iterate in the non-floored eigen-directions of the whitening only.
    seed : used only when start samples run out (tiny recordings); otherwise deterministic.
    """

    n_iter: int = setting(50, lo=1, hi=10000)
    contrast: str = setting("skew", choices=("skew", "logcosh", "kurtosis"))
    max_fp_iter: int = setting(200, lo=1, hi=100000)
    tol: float = setting(1e-4, lo=0.0, lo_open=True, hi=1.0)
    batch: int = setting(16, lo=1, hi=1024)
    deflate_rejected: bool = True
    signal_subspace: bool = True
    seed: int = setting(0, lo=0, hi=2**32 - 1)


@dataclass(frozen=True)
class OracleSettings(Settings):
    """Filters from the TRUE MUAPs (simulation only): the identifiable upper bound.

    n_lags : candidate extension lags per MUAP (largest ``||W b||``); the best SIL is kept.
    pad : zero padding (samples) of the MUAP before band-passing (default 25 ms).
    """

    n_lags: int | None = setting(8, lo=1, hi=1024)
    pad: int | None = setting(None, lo=0)


@dataclass(frozen=True)
class ModelSettings(Settings):
    """Model-informed proposer (BMISS): filters from forward-model MUAPs fitted by Adam.

    anatomy, grid, ied_mm : the forward model's anatomy (default: the recording's own).
    model_search : run the ``model_search`` stage of the default ``bmiss`` (the search for more
        units within the fitted subject model, after the blind search). On by default: on the
        mismatch benchmark it added 2 and 3 units at RoA >= 0.9 (another IAP, a rotated grid; 20 dB)
        and no false one (``results/bench_mismatch_model_search.json``); off saves its time where
        it adds nothing. The settings below (``forward`` to ``max_units``) configure it.
    model_search_min_ev : the model search runs only when the fitted subject model explains at
        least this share of the blind units' MUAP variance (0: always; no fitted model: it runs).
        Measured on the same benchmark: it added units only where the fit explained 0.85-0.97;
        at 0.09-0.48 (short fibres, non-physical MUAPs) it found nothing in four runs and took
        30-55 s each. 0.8 is the subject fit's own refit threshold (``subject_fit.min_ev``), not a
        value tuned on those runs.
    forward : the MUAP model of the model search: ``"surrogate"`` (default; the universal network,
        :mod:`bmiss.surrogate`) or ``"conductor"`` (the analytic volume conductor the network was
        trained on). A subject the network's training domain does not cover is searched with the
        conductor, and ``meta["forward_model"]`` says why. On the mismatch benchmark the network
        found the conductor's units on every row, and one more on one
        (``results/bench_mismatch_s5.json``). On a 20-s recording its search took 3.4 s against the
        conductor's 5.3 s, with the same units (two quiet cores, ``results/bench_time_s6.json``).
    n_rounds, patience : at most ``n_rounds`` propose/accept/peel rounds; stop after ``patience``
        rounds in a row without a new unit. A round never starts from a probe an earlier round
        started from (or one whose probe source correlates > 0.9 with one).
    n_probe, probe_shifts : Latin-hypercube probe of the parameter space, time shifts (samples).
    n_starts, n_steps, lr : diverse starts per round, Adam steps and learning rate. 20 steps
        reach the 30-step contrast within 0.006-0.012 on average; on the mismatch benchmark they
        found the same units as 30 in 20-26 % less search time, give or take the one borderline
        model-phase unit (RoA near 0.9) that float order moves (``results/bench_mismatch_s4*.json``).
    contrast : ``"skew"``, ``"kurtosis"`` or ``"logcosh"`` of the source.
    fit_s, probe_s : seconds of randomly drawn data samples the loss / the probe scores use
        (in seconds, not samples, so that a 10,240-Hz recording gets the same evidence as a
        2,048-Hz one: 4 s = 8192 samples at 2048 Hz).
    max_units : stop after this many units.
    subject_fit : the ``subject_fit`` stage (``init="blind"``): a group of settings
        (:class:`~bmiss.fitting.SubjectFitSettings`, e.g. ``subject_fit.n_starts``,
        ``subject_fit.fix=none`` to fit fat and skin too, ``subject_fit.min_ev``;
        ``subject_fit=false`` is short for ``subject_fit.enabled=false``: search within the base
        anatomy as given). The pipeline holds fat and skin at the anatomy's values by default.
    unit_fit : the ``unit_properties`` stage (:class:`~bmiss.fitting.UnitFitSettings`): every final
        unit's properties fitted to its own spike-triggered MUAP under the fitted subject model
        (amplitude informs size); off: blind units keep the subject fit's values, found units the
        search's (scale-free) parameters.
    blind : the blind search of the default ``bmiss`` (:class:`FastICASettings`; its ``seed`` is
        the method's ``seed``).
    """

    anatomy: object = None
    model_search: bool = True
    model_search_min_ev: float = setting(0.8, lo=0.0, hi=1.0)
    grid: tuple[int, int] | None = setting(None, lo=1, hi=1024)
    ied_mm: float | None = setting(None, lo=0.5, hi=100.0)
    forward: str = setting("surrogate", choices=("conductor", "surrogate"))
    n_rounds: int = setting(6, lo=1, hi=1000)
    patience: int = setting(1, lo=1, hi=1000)
    n_probe: int = setting(1024, lo=1, hi=1_000_000)
    probe_shifts: tuple[float, ...] = (-12.0, -4.0, 4.0, 12.0)
    n_starts: int = setting(16, lo=1, hi=1024)
    n_steps: int = setting(20, lo=1, hi=100000)
    lr: float = setting(0.08, lo=0.0, lo_open=True, hi=10.0)
    contrast: str = setting("skew", choices=("skew", "logcosh", "kurtosis"))
    fit_s: float = setting(4.0, lo=0.0, lo_open=True, hi=3600.0)
    probe_s: float = setting(2.0, lo=0.0, lo_open=True, hi=3600.0)
    max_units: int = setting(128, lo=1, hi=100000)
    subject_fit: SubjectFitSettings = setting(default_factory=lambda: SubjectFitSettings(fix=("fat_mm", "skin_mm")))
    unit_fit: UnitFitSettings = setting(default_factory=UnitFitSettings)
    blind: FastICASettings = setting(default_factory=FastICASettings)
    seed: int = setting(0, lo=0, hi=2**32 - 1)


#: shared-rule defaults of each method (what differs is named here, not copied into code)
METHOD_RULES = {
    "cbss": Rules(),
    # model phase: the blind phase's SIL threshold (0.85 let mixtures through on mismatched
    # recordings: tests/test_bmiss.py), deconvolution on (experiments/bench_deconvolve.py: more
    # units at RoA >= 0.9 or higher mean RoA at 20 and 10 dB, no false unit added)
    # and a CoV-of-ISI limit: on a short-fibre 10-dB recording the model phase's false units had
    # CoV 0.61 and 0.76, its true units 0.13-0.22 (diagnostic run, see the README)
    "bmiss": Rules(sil_threshold=0.9, keep="sil", flip=False, peel_floor=3.0, deconvolve=True, max_cov=0.5),
    "oracle": Rules(flip=False, refine=False, accept_all=True, dedupe=False, peel=False, retime=False,
                    align="proposer"),
}
PROPOSER_SETTINGS = {"cbss": FastICASettings, "bmiss": ModelSettings, "oracle": OracleSettings}


def _split(method: str, rules: Rules, settings, kw: dict) -> tuple[dict, dict]:
    """Keyword overrides -> (proposer's, rules'): a key (or a dotted key's head) goes to the
    proposer's settings when it names one of its fields, else to :class:`Rules`."""
    pf = {f.name for f in dataclasses.fields(settings)}
    rf = {f.name for f in dataclasses.fields(rules)}
    p_kw, r_kw, bad = {}, {}, []
    for k, v in kw.items():
        head = k.split(".", 1)[0]
        if head in pf:
            p_kw[k] = v
        elif head in rf:
            r_kw[k] = v
        else:
            bad.append(k)
    if bad:
        names = sorted(pf | rf)
        raise SettingsError(f"unknown setting(s) for method {method!r}: "
                            f"{', '.join(repr(k) + did_you_mean(k.split('.', 1)[0], names) for k in bad)}; "
                            f"valid: {', '.join(names)}")
    return p_kw, r_kw


def resolve(method: str, rules: Rules | None = None, settings=None, **kw):
    """``(rules, proposer settings)`` of ``method`` with keyword overrides applied and checked.

    A keyword goes to the proposer's settings when it names one of its fields, else to
    :class:`Rules`; dotted keys (``subject_fit.n_starts``) reach nested groups; an unknown name,
    a value of the wrong type or out of range raises :class:`~bmiss.errors.SettingsError`.

    Examples
    --------
    >>> rules, s = resolve("bmiss", **{"subject_fit.n_starts": 2, "sil_threshold": 0.85})
    >>> s.subject_fit.n_starts, rules.sil_threshold
    (2, 0.85)
    """
    if method not in PROPOSER_SETTINGS:
        raise SettingsError(f"unknown method {method!r}; choose one of {', '.join(PROPOSER_SETTINGS)}"
                            f"{did_you_mean(method, PROPOSER_SETTINGS)}")
    rules = rules if rules is not None else METHOD_RULES[method]
    settings = settings if settings is not None else PROPOSER_SETTINGS[method]()
    p_kw, r_kw = _split(method, rules, settings, kw)
    return rules.replace(**r_kw), settings.replace(**p_kw)


def parse_settings(method: str, items) -> dict:
    """``KEY=VALUE`` texts (the CLI's ``--setting``) -> typed keywords for :func:`resolve`.

    Each value is parsed by its field's type: booleans ``true/false/yes/no/on/off/1/0``,
    integers, numbers, ``none``, tuples ``20,450``; a group (``deconvolve``, ``subject_fit``)
    takes ``true``/``false`` for its ``enabled`` field.
    """
    if method not in PROPOSER_SETTINGS:
        raise SettingsError(f"unknown method {method!r}; choose one of {', '.join(PROPOSER_SETTINGS)}")
    rules, settings = METHOD_RULES[method], PROPOSER_SETTINGS[method]()
    out = {}
    for it in items or ():
        if "=" not in it:
            raise SettingsError(f"--setting must look like KEY=VALUE (e.g. sil_threshold=0.85), got {it!r}")
        k, v = (x.strip() for x in it.split("=", 1))
        p_kw, _ = _split(method, rules, settings, {k: v})
        out[k] = parse_value(type(settings) if p_kw else type(rules), k, v)
    return out
