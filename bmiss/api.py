"""The notebook API: ``simulate``, ``decompose``, ``evaluate``, ``export`` (the CLI calls these)."""
from __future__ import annotations

import json
from pathlib import Path

from .io import Decomposition, Recording, atomic_write, load_decomposition, load_recording
from .simulate import simulate  # noqa: F401  (re-exported)

METHODS = ("bmiss", "cbss", "oracle")


def _as_recording(rec) -> Recording:
    return rec if isinstance(rec, Recording) else load_recording(rec)


def decompose(rec: Recording | str | Path, method: str = "bmiss", *, progress: bool = True, **kw) -> Decomposition:
    """Decompose a recording into MU spike trains.

    method: "bmiss" (model-informed inversion; kw: anatomy, n_rounds, forward, seed, ...),
    "cbss" (convolutive FastICA baseline; kw: n_iter, contrast, seed, ...) or
    "oracle" (separation filters from the recording's TRUE MUAPs: an upper bound, simulation only).
    """
    rec = _as_recording(rec)
    if method == "cbss":
        from .decompose import decompose_cbss

        return decompose_cbss(rec.emg, rec.fs, progress=progress, **kw)
    if method == "oracle":
        if rec.true_muaps is None:
            raise ValueError("method 'oracle' needs the recording's true MUAPs (a simulated recording)")
        from .decompose import decompose_oracle

        kw.pop("seed", None)  # deterministic: nothing to seed
        return decompose_oracle(rec.emg, rec.fs, rec.true_muaps, **kw)
    if method == "bmiss":
        from .decompose.inversion import decompose_bmiss

        return decompose_bmiss(rec, progress=progress, **kw)
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def oracle_identifiable(rec: Recording, *, threshold: float = 0.9, oracle: Decomposition | None = None) -> list[int]:
    """Indices of the true MUs that the true-MUAP oracle filter finds at RoA >= ``threshold``."""
    from . import metrics

    oracle = oracle or decompose(rec, "oracle", progress=False)
    m = metrics.match_units(oracle.spikes, rec.true_spikes, rec.fs)
    return [int(r["true"]) for r in m["per_true"] if r["est"] >= 0 and (r["roa"] or 0) >= threshold]


def evaluate(dec: Decomposition | str | Path, rec: Recording | str | Path, *, oracle: bool = False, **kw) -> dict:
    """Score a decomposition against the ground truth of a simulated recording (see metrics.evaluate).

    oracle=True also runs the oracle and reports the yield as a fraction of the identifiable MUs.
    """
    from . import metrics

    dec = dec if isinstance(dec, Decomposition) else load_decomposition(dec)
    rec = _as_recording(rec)
    if oracle and rec.true_muaps is not None and "oracle_found" not in kw:
        kw["oracle_found"] = oracle_identifiable(rec)
    if "bounds" not in kw and dec.params is not None and rec.meta.get("anatomy_toml"):
        from . import anatomy

        import tomllib

        a = anatomy.from_dict(tomllib.loads(rec.meta["anatomy_toml"]), source=rec.meta.get("anatomy", "recording"))
        kw["bounds"] = a.param_bounds()
    return metrics.evaluate(dec, rec, **kw)


EXPORT_FORMATS = ("openhdemg", "csv", "tsv", "json")


def export(dec: Decomposition | str | Path, out: str | Path, fmt: str | None = None, *,
           rec: Recording | str | Path | None = None, force: bool = False) -> Path:
    """Write a decomposition for other tools.

    fmt: "openhdemg" (gzip JSON emgfile; needs the recording), "csv" (per-MU summary and fitted
    MU properties), "tsv" (EMG-BIDS ``_events.tsv`` of discharges), "json" (MU properties and
    quality as JSON). Inferred from the suffix of ``out`` when omitted.
    """
    from . import formats, metrics

    dec = dec if isinstance(dec, Decomposition) else load_decomposition(dec)
    out = Path(out)
    if fmt is None:
        name = out.name.lower()
        fmt = ("openhdemg" if name.endswith((".json.gz", ".json")) and rec is not None else
               "csv" if name.endswith(".csv") else "tsv" if name.endswith(".tsv") else
               "json" if name.endswith(".json") else None)
        if fmt is None:
            raise ValueError(f"cannot infer the export format from {out.name!r}; pass one of {EXPORT_FORMATS}")
    if fmt == "openhdemg":
        if rec is None:
            raise ValueError("openhdemg export needs the recording (--recording REC): the emgfile holds RAW_SIGNAL")
        return formats.save_openhdemg(out, dec, _as_recording(rec), force=force)
    if fmt == "tsv":
        return formats.save_events_tsv(out, dec, force=force)
    quality = [metrics.unit_quality(dec.sources[i], dec.spikes[i], dec.fs) for i in range(dec.n_units)]
    if fmt == "csv":
        return formats.save_summary_csv(out, dec, quality, force=force)
    if fmt == "json":
        units = []
        for i in range(dec.n_units):
            u = {"unit": i, **quality[i]}
            if dec.params is not None:
                for j, n in enumerate(dec.param_names or ()):
                    u[n] = float(dec.params[i, j])
                    if dec.param_std is not None:
                        u[n + "_std"] = float(dec.param_std[i, j])
            units.append(u)
        doc = {"method": dec.method, "fs": dec.fs, "n_units": dec.n_units, "units": units, "meta": dec.meta}
        text = json.dumps(metrics._jsonable(doc), indent=1)
        return atomic_write(out, lambda tmp: Path(tmp).write_text(text), force=force)
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")


__all__ = ["simulate", "decompose", "evaluate", "export", "oracle_identifiable", "METHODS", "EXPORT_FORMATS"]
