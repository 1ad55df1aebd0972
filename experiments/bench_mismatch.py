"""A benchmark the inversion cannot cheat on: recordings whose MUAPs do not come from its model path.

    python experiments/bench_mismatch.py --recordings all --snrs 20 10 --methods oracle cbss bmiss \
        --duration 20 --json results/bench_mismatch_issue10.json

Recordings (biceps_brachii nominal anatomy in every file's meta, which is what the inversion and
the subject fit read; the real values are hidden in ``meta["hidden_truth"]``):

* ``tissue``   per-fibre MUAPs, tissue perturbed (fat 4.5 mm, sigma_r 0.15, skin sigma 0.5 S/m).
* ``iap``      per-fibre MUAPs from another intracellular action potential (``iap="gamma2"``).
* ``short``    short fibres (35 +/- 2 mm, end scatter 1 mm): strong non-propagating components.
* ``rotated``  the grid turned 10 degrees to the fibres.
* ``hermite``  non-physical Hermite-Rodriguez MUAPs with smooth amplitude maps.
* ``real``     the real GR10MM0808 recording in ../shared/data (no truth: blind quality and agreement).

Per simulated recording and SNR: oracle-identifiable count, then per method the units found at
RoA >= 0.9, false units (best RoA < 0.3) and time; then the subject fit (on the cbss units) with
its accuracy against the hidden truth (fat, fibre length, mean CV, IZ, rotation). Methods are
``oracle``, ``cbss``, ``bmiss`` or ``bmiss:key=value,...`` (keywords passed to the decomposer,
e.g. ``bmiss:init=model`` once the pipeline has it). ``--no-fit`` skips the fit.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import bmiss
from bmiss import api, metrics
from bmiss.conductor import PARAM_NAMES
from bmiss import files as bfiles
from bmiss.errors import FitError
from bmiss.fitting import UnitFitSettings
from bmiss.files import write_json

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "scd_example_gr10mm0808_10240hz.mat"

RECORDINGS = {
    "tissue": {"tissue_overrides": {"fat_thickness_mm": 4.5, "muscle_conductivity_radial": 0.15,
                                    "skin_conductivity": 0.5}},
    "iap": {"iap": "gamma2"},
    "short": {"muscle_overrides": {"fibre_length_mm": 35.0, "fibre_length_spread_mm": 2.0, "end_jitter_mm": 1.0}},
    "rotated": {"grid_rotation_deg": 10.0},
    "hermite": {"muap_family": "hermite"},
}


def parse_method(spec: str) -> tuple[str, str, dict]:
    name, _, rest = spec.partition(":")
    kw = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        try:
            v = json.loads(v)
        except ValueError:
            pass
        kw[k] = v
    return spec, name, kw


def fit_accuracy(f, rec) -> dict:
    h = rec.meta.get("hidden_truth", {})
    v = {k: val for k, (val, _) in f.subject.items()}
    tp = rec.true_params
    # match fitted (blind) units to true units for the per-unit truth
    m = metrics.match_units(f.decomposition.spikes, rec.true_spikes, rec.fs)
    e2t = {int(r["est"]): int(r["true"]) for r in m["per_true"] if r["est"] >= 0 and (r["roa"] or 0) >= 0.5}
    ti = np.array([e2t.get(int(i), -1) for i in f.unit_index])
    ok = ti >= 0
    out = {"fitted": v, "std": {k: s for k, (_, s) in f.subject.items()}, "explained_variance": f.overall_ev,
           "chi2_reduced": f.chi2_reduced, "n_units": int(len(f.unit_index)), "timing_s": f.timing}
    if rec.meta.get("muap_family") == "hermite":
        out["note"] = "non-physical MUAPs: no tissue truth; only the explained variance is meaningful"
        return out
    lay, mus = h.get("layers", {}), h.get("muscle", {})
    err = {"fat_mm": v["fat_mm"] - lay.get("fat_thickness_mm", np.nan),
           "length_rel": (float(np.mean(f.unit_params[:, 5])) / mus.get("fibre_length_mm", np.nan) - 1),
           "rotation_deg": v["rotation_deg"] - h.get("grid_rotation_deg", 0.0)}
    if ok.any():
        err["cv_m_s"] = float(np.mean(f.unit_params[ok, 4]) - np.mean(tp[ti[ok], 4]))
        err["iz_mm"] = float(np.mean(np.abs(f.unit_params[ok, 3] - v["dz_mm"] - tp[ti[ok], 3])))
    out["errors"] = err
    return out


def _phases(dec) -> list[str]:
    """Which phase found each unit: ``blind`` (FastICA), ``model`` (model-informed search) or the
    method's name for single-phase methods."""
    units = dec.meta.get("units")
    if not isinstance(units, list) or len(units) != dec.n_units:
        return [dec.method] * dec.n_units
    name = {0: "blind", 1: "model"} if dec.meta.get("settings", {}).get("phases") else {}
    return [name.get(u.get("phase"), dec.method) if isinstance(u, dict) else dec.method for u in units]


def _model_meta(dec) -> dict:
    """Which MUAP model the model search used (conductor, surrogate, or why the surrogate was refused),
    whether the search ran, and the subject fit's summary: {} for methods without them."""
    m = dec.meta
    out = {k: v for k, v in (("forward_model", m.get("forward_model")),
                             ("model_search", (m.get("settings") or {}).get("model_search"))) if v is not None}
    sm = m.get("subject_model")
    if sm:  # the subject fit: its result, and which MUAP model fitted it
        out["subject_model"] = {k: sm.get(k) for k in ("subject", "overall_explained_variance", "refit_free", "error",
                                                       "time_s", "forward_model", "unit_forward_model")}
    return out


def unit_breakdown(dec, rec) -> dict:
    """Per estimated unit: phase, blind quality and its best RoA against the truth; found/false by phase."""
    m = metrics.match_units(dec.spikes, rec.true_spikes, rec.fs)
    roa = np.asarray(m["roa"]).reshape(len(rec.true_spikes), dec.n_units)
    matched = {j: r for _, j, r in m["matched_pairs"]}
    false = set(m["false_units"])
    ph = _phases(dec)
    units, by_phase = [], {}
    for j in range(dec.n_units):
        q = metrics.unit_quality(dec.sources[j], dec.spikes[j], dec.fs)
        status = "found_90" if matched.get(j, 0) >= 0.9 else "matched" if j in matched else \
            "false" if j in false else "duplicate"
        units.append({"phase": ph[j], "status": status, "best_roa": round(float(roa[:, j].max()), 3) if roa.size else 0.0,
                      **{k: (round(float(v), 4) if isinstance(v, (float, np.floating)) else v) for k, v in q.items()}})
        b = by_phase.setdefault(ph[j], {"found_90": 0, "false": 0, "n": 0})
        b["n"] += 1
        b["found_90"] += status == "found_90"
        b["false"] += status == "false"
    return {"by_phase": by_phase, "units": units}


def property_units(dec, rec, rep) -> list:
    """Per matched unit with properties (``PARAM_NAMES`` order): the truth, the error (estimate -
    truth), the reported std and interval, the amortized posterior's mean, std and quantiles and the
    unit fit's Laplace std (each None where the unit has none) and which rule
    made the interval (``std_from``): what ``calibrate_unit_std.py`` needs to calibrate on
    decomposed units."""
    if getattr(dec, "params", None) is None or rec.true_params is None or not rep.get("matched_pairs"):
        return []
    units = dec.meta.get("units") or []
    if dec.param_names is None or rec.param_names is None or not set(PARAM_NAMES) <= set(dec.param_names) \
            or not set(PARAM_NAMES) <= set(rec.param_names):
        return []
    ei = [list(dec.param_names).index(n) for n in PARAM_NAMES]
    ti = [list(rec.param_names).index(n) for n in PARAM_NAMES]
    out = []
    for i, j, roa in rep["matched_pairs"]:
        truth = np.asarray(rec.true_params[i], np.float64)[ti]
        err = np.asarray(dec.params[j], np.float64)[ei] - truth
        if not np.isfinite(err).any():
            continue
        mu = units[j] if j < len(units) else {}
        post = (mu.get("posterior") or {}).get("std")
        post_mean = (mu.get("posterior") or {}).get("mean")
        pq = mu.get("posterior") or {}
        post_q = [[float(pq[f"q{k}"][n]) for k in ("0.025", "0.16", "0.84", "0.975")] for n in PARAM_NAMES] \
            if all(f"q{k}" in pq for k in ("0.025", "0.16", "0.84", "0.975")) else None
        lap = mu.get("laplace_std")
        out.append({"unit": int(j), "roa": round(float(roa), 3), "std_from": mu.get("std_from"),
                    "err": [float(v) for v in err], "std": [float(v) for v in np.asarray(dec.param_std[j])[ei]],
                    "post_std": None if post is None else [float(post[n]) for n in PARAM_NAMES],
                    # the posterior's mean beside the reported value: what a study of the model check needs
                    "post_mean": None if post_mean is None else [float(post_mean[n]) for n in PARAM_NAMES],
                    "post_q": post_q,  # its 2.5 / 16 / 84 / 97.5 % quantiles [6, 4]
                    "laplace_std": None if lap is None else [np.nan if lap[n] is None else float(lap[n])
                                                             for n in PARAM_NAMES],
                    "truth": [float(v) for v in truth],
                    "interval": None if getattr(dec, "param_interval", None) is None else
                    [[float(v) for v in q] for q in np.asarray(dec.param_interval[j], np.float64)[ei]]})
    return out


def run_sim(name, snr, methods, duration, n_units, seed, do_fit, progress):
    snr_v = None if str(snr).lower() in ("inf", "none") else float(snr)
    t = time.perf_counter()
    rec = bmiss.simulate("biceps_brachii", duration_s=duration, snr_db=snr_v, seed=seed, n_units=n_units,
                         **RECORDINGS[name])
    row = {"recording": name, "snr_db": str(snr), "simulate_s": round(time.perf_counter() - t, 1),
           "options": RECORDINGS[name], "methods": {}}
    t = time.perf_counter()
    orc = api.decompose(rec, "oracle", progress=False)
    ident = api.oracle_identifiable(rec, oracle=orc)
    row["identifiable"] = len(ident)
    decs = {"oracle": (orc, time.perf_counter() - t)}
    for spec, mname, kw in map(parse_method, methods):
        if spec != "oracle":
            t = time.perf_counter()
            try:
                decs[spec] = (api.decompose(rec, mname, progress=progress, seed=seed, **kw), time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001 - one failing method must not lose the others' rows
                row["methods"][spec] = {"error": f"{type(e).__name__}: {e}"}
                continue
        dec, dt = decs[spec]
        rep = api.evaluate(dec, rec, oracle_found=ident)
        s = rep["summary"]
        row["methods"][spec] = {"found_90": s["found_90"], "false": s["n_false"], "n_est": s["n_est"],
                                "duplicates": s["n_duplicates"], "time_s": round(dt, 1),
                                "timing_s": dec.meta.get("timing_s"), **_model_meta(dec), **unit_breakdown(dec, rec)}
        if "property_errors" in rep:  # nRMSE by the nominal anatomy's range, over matched units with values
            row["methods"][spec]["properties"] = {  # with the reported intervals' coverage where there are any
                k: {kk: v.get(kk) for kk in ("nrmse", "rmse", "n", "cover68", "cover95", "n_interval") if kk in v}
                for k, v in rep["property_errors"].items()}
            if dec.meta.get("unit_fit"):
                row["methods"][spec]["unit_fit"] = dec.meta["unit_fit"]
            row["methods"][spec]["property_units"] = property_units(dec, rec, rep)
        print(f"{name:8s} {str(snr):>4s} {spec:18s} found {s['found_90']:3d} / ident {len(ident):3d}  false "
              f"{s['n_false']:3d}  time {dt:6.1f} s", flush=True)
    if do_fit and "cbss" in decs:
        try:
            f = api.fit(rec, decomposition=decs["cbss"][0], progress=False, seed=seed)
            row["fit"] = fit_accuracy(f, rec)
            print(f"{name:8s} {str(snr):>4s} fit: EV {f.overall_ev:.3f}, errors {row['fit'].get('errors')}, "
                  f"fit {f.timing['fit']:.1f} s", flush=True)
        except FitError as e:
            row["fit"] = {"error": str(e)}
    return row


def run_real(methods, duration, seed, do_fit, progress, real_anatomy="vastus_lateralis"):
    if not DATA.is_file():
        return {"recording": "real", "note": f"{DATA} is absent (see shared/data/README.md)"}
    try:
        rec = bmiss.io.load_recording(DATA, fs=10240.0, electrode="GR10MM0808")  # rate from shared/data/README.md
    except Exception as e:  # noqa: BLE001 - the reader belongs to another module; say why and go on
        return {"recording": "real", "note": f"could not read {DATA.name}: {type(e).__name__}: {e}"}
    if duration and duration < rec.duration_s:
        from bmiss.io import Recording

        n = int(round(duration * rec.fs))
        rec = Recording(emg=rec.emg[:, :n], fs=rec.fs, electrode=rec.electrode, orientation=rec.orientation,
                        meta={**rec.meta, "crop_samples": [0, n]})
    row = {"recording": "real", "file": DATA.name, "duration_s": rec.duration_s, "methods": {}}
    decs = {}
    for spec, mname, kw in map(parse_method, methods):
        if mname == "oracle":
            continue
        if mname == "bmiss":  # the grid (8x8 @ 10 mm) does not fit the nominal biceps; a thigh muscle
            kw = {"anatomy": real_anatomy, **kw}
        t = time.perf_counter()
        try:
            dec = api.decompose(rec, mname, progress=progress, seed=seed, **kw)
        except Exception as e:  # noqa: BLE001
            row["methods"][spec] = {"error": f"{type(e).__name__}: {e}"}
            continue
        dt = time.perf_counter() - t
        decs[spec] = dec
        q = [metrics.unit_quality(dec.sources[i], dec.spikes[i], dec.fs) for i in range(dec.n_units)]
        row["methods"][spec] = {"n_units": dec.n_units, "time_s": round(dt, 1),
                                "sil_median": float(np.median(dec.sil)) if dec.n_units else None,
                                "cov_isi_median": float(np.nanmedian(dec.cov_isi)) if dec.n_units else None,
                                "quality": q, "phase": _phases(dec), **_model_meta(dec)}
        print(f"real      {spec:18s} units {dec.n_units:3d}  time {dt:6.1f} s", flush=True)
    if "cbss" in decs:
        for spec, dec in decs.items():
            if spec == "cbss":
                continue
            m = metrics.match_units(dec.spikes, decs["cbss"].spikes, rec.fs)
            common = sum(1 for r in m["per_true"] if r["est"] >= 0 and (r["roa"] or 0) >= 0.9)
            row["methods"][spec]["common_with_cbss_90"] = int(common)
        if do_fit:
            try:
                # the grid (8x8 @ 10 mm) does not fit the default biceps anatomy; the example is a thigh muscle
                f = api.fit(rec, anatomy=real_anatomy, decomposition=decs["cbss"], progress=False, seed=seed)
                row["fit"] = {"anatomy": real_anatomy, "fitted": {k: v for k, (v, _) in f.subject.items()},
                              "std": {k: s for k, (_, s) in f.subject.items()},
                              "explained_variance": f.overall_ev, "unit_ev": f.explained_variance.tolist(),
                              "chi2_reduced": f.chi2_reduced, "n_units": int(len(f.unit_index)), "timing_s": f.timing}
                print(f"real      fit: EV {f.overall_ev:.3f} on {len(f.unit_index)} units, fit {f.timing['fit']:.1f} s")
            except (FitError, bmiss.io.BmissFileError) as e:
                row["fit"] = {"error": str(e)}
    return row


def table(rows) -> str:
    lines = ["| recording | SNR | identifiable | method | found (RoA>=0.9) | false | time s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for spec, m in r.get("methods", {}).items():
            if "error" in m:
                lines.append(f"| {r['recording']} | {r.get('snr_db', '-')} | {r.get('identifiable', '-')} | {spec} | error | | |")
            elif r["recording"] == "real":
                lines.append(f"| real | - | - | {spec} | {m['n_units']} units (common with cbss: "
                             f"{m.get('common_with_cbss_90', '-')}) | - | {m['time_s']} |")
            else:
                lines.append(f"| {r['recording']} | {r['snr_db']} | {r['identifiable']} | {spec} | {m['found_90']} | "
                             f"{m['false']} | {m['time_s']} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recordings", nargs="+", default=["all"], help=f"{' '.join(RECORDINGS)} real, or all")
    ap.add_argument("--snrs", nargs="+", default=["20", "10"])
    ap.add_argument("--methods", nargs="+", default=["oracle", "cbss", "bmiss"])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--n-units", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-fit", action="store_true")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--real-anatomy", default="vastus_lateralis", help="base anatomy for the real recording's fit")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    names = list(RECORDINGS) + ["real"] if "all" in a.recordings else a.recordings
    bad = [n for n in names if n not in RECORDINGS and n != "real"]
    if bad:
        ap.error(f"unknown recording(s) {bad}; choose from {list(RECORDINGS)} real all")
    rows = []
    t0 = time.perf_counter()
    prov = bfiles.provenance()
    UF = UnitFitSettings()

    def write(final: bool):
        # after every row, so a long run stopped part-way keeps what it measured
        doc = {"command": " ".join([sys.executable] + sys.argv), "settings": vars(a), "rows": rows,
               "table_md": table(rows), "total_s": round(time.perf_counter() - t0, 1), "provenance": prov,
               "complete": final, "load_after": bfiles.provenance()["load_avg"],
               # the interval factors the default bmiss ran with (property_units' std = hypot(Laplace, k95 post))
               "unit_fit_scales": {"posterior_scale": list(UF.posterior_scale),
                                   "posterior_scale68": list(UF.posterior_scale68)}}
        if a.json:
            write_json(a.json, doc)

    for n in names:
        if n == "real":
            rows.append(run_real(a.methods, a.duration, a.seed, not a.no_fit, a.progress, a.real_anatomy))
            write(False)
            continue
        for snr in a.snrs:
            rows.append(run_sim(n, snr, a.methods, a.duration, a.n_units, a.seed, not a.no_fit, a.progress))
            write(False)
    print(table(rows))
    write(True)
    if a.json:
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
