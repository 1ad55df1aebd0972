"""Settings of a decomposition: one frozen dataclass for the shared pipeline rules, one per proposer.

Every field has a documented default; :func:`resolve` maps keyword overrides (API ``**kw``, CLI
flags) onto them and rejects unknown names with the list of valid ones.  The decomposition's
``meta["settings"]`` records the full resolved settings (:func:`as_dict`).
"""
from __future__ import annotations

from ..errors import SettingsError  # noqa: F401  (re-exported)
import dataclasses
import difflib
from dataclasses import dataclass

__all__ = ["SettingsError", "Rules", "FastICASettings", "OracleSettings", "ModelSettings", "METHOD_RULES", "PROPOSER_SETTINGS",
           "resolve", "as_dict"]




@dataclass(frozen=True)
class Rules:
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
        non-negative, refractory, threshold from the noise level); off by default until the
        benchmark shows it helps (``experiments/bench_deconvolve.py``); on for ``bmiss``.
    """

    R: int | None = None
    band: tuple[float, float] | None = (20.0, 500.0)
    min_distance_ms: float = 20.0
    flip: bool = True
    refine: bool = True
    max_refine_iter: int = 10
    sil_threshold: float = 0.9
    min_spikes: int = 10
    max_cov: float | None = None
    accept_all: bool = False
    dedupe: bool = True
    dup_threshold: float = 0.3
    dup_tol_ms: float = 0.5
    dup_max_lag_ms: float = 25.0
    keep: str = "cov"
    peel: bool = True
    peel_ms: float = 50.0
    peel_floor: float = 0.0
    retime: bool = True
    align: str = "onset"
    deconvolve: bool = False

    def __post_init__(self):
        if self.keep not in ("cov", "sil"):
            raise SettingsError(f"keep must be 'cov' or 'sil', got {self.keep!r}")
        if self.align not in ("onset", "proposer"):
            raise SettingsError(f"align must be 'onset' or 'proposer', got {self.align!r}")
        if self.R is not None and int(self.R) < 1:
            raise SettingsError(f"extension factor R must be >= 1, got {self.R}")
        if self.min_distance_ms <= 0:
            raise SettingsError(f"min_distance_ms must be > 0, got {self.min_distance_ms}")


@dataclass(frozen=True)
class FastICASettings:
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

    n_iter: int = 50
    contrast: str = "skew"
    max_fp_iter: int = 200
    tol: float = 1e-4
    batch: int = 16
    deflate_rejected: bool = True
    signal_subspace: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.contrast not in ("skew", "logcosh", "kurtosis"):
            raise SettingsError(f"contrast must be one of skew, logcosh, kurtosis; got {self.contrast!r}")
        if int(self.n_iter) < 1:
            raise SettingsError(f"n_iter must be >= 1, got {self.n_iter}")


@dataclass(frozen=True)
class OracleSettings:
    """Filters from the TRUE MUAPs (simulation only): the identifiable upper bound.

    n_lags : candidate extension lags per MUAP (largest ``||W b||``); the best SIL is kept.
    pad : zero padding (samples) of the MUAP before band-passing (default 25 ms).
    """

    n_lags: int | None = 8
    pad: int | None = None


@dataclass(frozen=True)
class ModelSettings:
    """Model-informed proposer (BMISS): filters from forward-model MUAPs fitted by Adam.

    anatomy, grid, ied_mm : the forward model's anatomy (default: the recording's own).
    forward : ``"conductor"`` (analytic) or ``"surrogate"`` (trained network).
    n_rounds, patience : at most ``n_rounds`` propose/accept/peel rounds; stop after ``patience``
        rounds in a row without a new unit. A round never starts from a probe an earlier round
        started from (or one whose probe source correlates > 0.9 with one).
    n_probe, probe_shifts : Latin-hypercube probe of the parameter space, time shifts (samples).
    n_starts, n_steps, lr : diverse starts per round, Adam steps and learning rate.
    contrast : ``"skew"``, ``"kurtosis"`` or ``"logcosh"`` of the source.
    fit_s, probe_s : seconds of randomly drawn data samples the loss / the probe scores use
        (in seconds, not samples, so that a 10,240-Hz recording gets the same evidence as a
        2,048-Hz one: 4 s = 8192 samples at 2048 Hz).
    max_units : stop after this many units.
    subject_fit : ``init="blind"``: fit the subject model to the blind units before the model search
        (off: search within the base anatomy as given; for comparisons).
    subject_fix : subject parameters (:data:`bmiss.fit.SUBJECT_NAMES`) that fit holds at the base
        anatomy's values. Fat and skin by default: under per-fibre MUAPs (every real recording)
        their fitted values were further from the truth than the base values (fat -2.3 / -2.5 mm
        fitted vs +0.6 / +1.1 mm base, ``results/bench_fit.json``), and a model searched with the
        fitted fat found fewer units (``results/diag_subject_fix.json``).
    min_fit_ev : when the fit with ``subject_fix`` held explains less than this fraction of the
        MUAPs' variance, it is repeated with them free and the better one is kept.
    unit_fit : with a subject fit (``init="blind"``), fit every final unit's properties to its own
        spike-triggered MUAP under the fitted subject model (:func:`bmiss.fit.fit_units`), so that
        amplitude informs size; off: blind units keep the subject fit's values, found units the
        search's (scale-free) parameters.
    """

    anatomy: object = None
    grid: tuple[int, int] | None = None
    ied_mm: float | None = None
    forward: str = "conductor"
    n_rounds: int = 6
    patience: int = 1
    n_probe: int = 1024
    probe_shifts: tuple[float, ...] = (-12.0, -4.0, 4.0, 12.0)
    n_starts: int = 16
    n_steps: int = 30
    lr: float = 0.08
    contrast: str = "skew"
    fit_s: float = 4.0
    probe_s: float = 2.0
    max_units: int = 128
    subject_fit: bool = True
    subject_fix: tuple[str, ...] = ("fat_mm", "skin_mm")
    min_fit_ev: float = 0.8
    unit_fit: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.forward not in ("conductor", "surrogate"):
            raise SettingsError(f"forward must be 'conductor' or 'surrogate', got {self.forward!r}")
        if self.contrast not in ("skew", "logcosh", "kurtosis"):
            raise SettingsError(f"contrast must be one of skew, logcosh, kurtosis; got {self.contrast!r}")
        fix = self.subject_fix
        if isinstance(fix, str):  # --setting subject_fix=fat_mm,skin_mm (or "none")
            fix = [] if fix.strip().lower() in ("", "none") else [k.strip() for k in fix.split(",")]
        fix = tuple(fix or ())
        from ..fit import SUBJECT_NAMES

        bad = [k for k in fix if k not in SUBJECT_NAMES]
        if bad:
            raise SettingsError(f"subject_fix: unknown subject parameter(s) {bad}; choose from {', '.join(SUBJECT_NAMES)}")
        object.__setattr__(self, "subject_fix", fix)
        if int(self.patience) < 1:
            raise SettingsError(f"patience must be >= 1, got {self.patience}")


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


def resolve(method: str, rules: Rules | None = None, settings=None, **kw):
    """``(rules, proposer settings)`` of ``method`` with keyword overrides applied.

    A keyword goes to the proposer's settings when it names one of its fields, else to
    :class:`Rules`; an unknown name raises ``ValueError`` listing the valid ones.
    """
    if method not in PROPOSER_SETTINGS:
        raise SettingsError(f"unknown method {method!r}; choose one of {', '.join(PROPOSER_SETTINGS)}")
    rules = rules if rules is not None else METHOD_RULES[method]
    settings = settings if settings is not None else PROPOSER_SETTINGS[method]()
    pf = {f.name for f in dataclasses.fields(settings)}
    rf = {f.name for f in dataclasses.fields(rules)}
    p_kw = {k: v for k, v in kw.items() if k in pf}
    r_kw = {k: v for k, v in kw.items() if k in rf and k not in pf}
    bad = [k for k in kw if k not in pf and k not in rf]
    if bad:
        names = sorted(pf | rf)
        hints = [f"{k!r} (did you mean {difflib.get_close_matches(k, names, 1)[0]!r}?)"
                 if difflib.get_close_matches(k, names, 1) else repr(k) for k in bad]
        raise SettingsError(f"unknown setting(s) for method {method!r}: {', '.join(hints)}; valid: {', '.join(names)}")
    if "band" in r_kw and r_kw["band"] is not None:
        r_kw["band"] = tuple(float(b) for b in r_kw["band"])
    return dataclasses.replace(rules, **r_kw), dataclasses.replace(settings, **p_kw)


def as_dict(obj) -> dict:
    """JSON-ready dict of a settings dataclass (tuples as lists, objects by name)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, tuple):
            v = list(v)
        elif not isinstance(v, (int, float, str, bool, list, dict, type(None))):
            v = getattr(v, "name", str(v))
        out[f.name] = v
    return out

