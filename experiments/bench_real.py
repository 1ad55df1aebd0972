"""Benchmark on the real 64-channel GR10MM0808 recording (10,240 Hz, 10 s; ../shared/data).

No ground truth: reports, per method, units found, SIL, PNR, CoV of ISI, discharge-rate range,
time, and the agreement between methods (units matched at RoA >= 0.9).  Also checks that the
pipeline's rules scale with the sampling rate: the same recording is decimated to 2048 Hz and
decomposed by cbss again; units matched across the two rates (spike times compared in ms) and the
rules' values in samples and ms are reported.

Usage (heavy: 102,401 samples x 64 channels; run once, niced)::

    nice -n 10 python experiments/bench_real.py --methods cbss bmiss --duration 10 \
        --json results/bench_real.json

``--duration S`` crops the recording (from ``--start``) to cap the run time;
``--methods cbss`` skips bmiss; ``--no-fs-check`` skips the decimated run.
"""
from __future__ import annotations

from bmiss.files import write_json

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "scd_example_gr10mm0808_10240hz.mat"


def _unit_table(dec, fs: float) -> dict:
    from bmiss import quality

    rates = [quality.discharge_rate(s, fs) for s in dec.spikes]
    f = lambda v: None if v is None or not np.isfinite(v) else round(float(v), 4)  # noqa: E731
    arr = lambda x: [] if x is None else [f(v) for v in np.asarray(x, float)]  # noqa: E731
    sil, pnr, cov = arr(dec.sil), arr(dec.pnr_db), arr(dec.cov_isi)
    med = lambda x: f(np.nanmedian([v for v in x if v is not None])) if any(v is not None for v in x) else None  # noqa: E731
    return {
        "n_units": dec.n_units,
        "n_spikes": [int(len(s)) for s in dec.spikes],
        "sil": sil, "pnr_db": pnr, "cov_isi": cov, "rate_hz": arr(rates),
        "median_sil": med(sil), "median_pnr_db": med(pnr), "median_cov_isi": med(cov),
        "rate_range_hz": [f(np.nanmin(rates)), f(np.nanmax(rates))] if rates else None,
        "n_rate_3_40_hz": int(sum(3 <= r <= 40 for r in rates if np.isfinite(r))),
    }


def _agreement(a, b, fs_a: float, fs_b: float | None = None) -> dict:
    """Units of ``a`` matched one-to-one to units of ``b`` (RoA, ±0.5 ms after the best lag);
    with ``fs_b`` the spikes of ``b`` are first mapped to ``a``'s sample grid."""
    from bmiss import metrics

    sb = b.spikes if fs_b is None else [np.round(np.asarray(s) * fs_a / fs_b).astype(np.int64) for s in b.spikes]
    if not a.spikes or not sb:
        return {"matched_90": 0, "matched_80": 0, "roa": []}
    m = metrics.match_units(a.spikes, sb, fs_a)
    roas = [r.get("roa") or 0.0 for r in m["per_true"] if r["est"] >= 0]
    return {"matched_90": int(sum(r >= 0.9 for r in roas)), "matched_80": int(sum(r >= 0.8 for r in roas)),
            "roa": [round(float(r), 3) for r in sorted(roas, reverse=True)]}


def _machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu_count": os.cpu_count(), "load_avg_1_5_15": load, "platform": platform.platform(),
            "python": sys.version.split()[0]}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--fs", type=float, default=10240.0, help="the file stores no rate (README of shared/data)")
    ap.add_argument("--electrode", default="GR10MM0808")
    ap.add_argument("--orientation", type=int, choices=(0, 180), default=180)
    ap.add_argument("--anatomy", default="tibialis_anterior",
                    help="bmiss tissue/muscle model (the recorded muscle is not documented; an 8x8 @ 10 mm grid "
                         "fits the shipped tibialis_anterior)")
    ap.add_argument("--methods", nargs="+", choices=("cbss", "bmiss"), default=["cbss", "bmiss"])
    ap.add_argument("--start", type=float, default=0.0, help="s")
    ap.add_argument("--duration", type=float, default=None, help="crop to this many seconds (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-fs-check", action="store_true", help="skip the runs on the 2048-Hz decimated copy")
    ap.add_argument("--fs-check-methods", nargs="+", choices=("cbss", "bmiss"), default=["cbss"],
                    help="methods rerun on the 2048-Hz decimated copy (default cbss)")
    ap.add_argument("--json", default=str(ROOT / "results" / "bench_real.json"))
    a = ap.parse_args(argv)

    from bmiss import api, io, quality
    from bmiss.io import Recording
    from bmiss.pipeline.settings import Rules  # read-only: the rules' defaults, for the report

    data = Path(a.data)
    if not data.is_file():
        print(f"bench_real: {data} is absent (see shared/data/README.md)", file=sys.stderr)
        return 2
    t = time.perf_counter()
    rec = io.load_recording(data, fs=a.fs, electrode=a.electrode, orientation=a.orientation)
    i0 = int(round(a.start * rec.fs))
    i1 = rec.n_samples if a.duration is None else min(rec.n_samples, i0 + int(round(a.duration * rec.fs)))
    if i0 > 0 or i1 < rec.n_samples:
        rec = Recording(emg=rec.emg[:, i0:i1], fs=rec.fs, electrode=rec.electrode, orientation=rec.orientation,
                        meta={**rec.meta, "crop_samples": [i0, i1]})
    read_s = time.perf_counter() - t
    print(f"read {data.name}: {rec.n_channels} ch x {rec.n_samples} samples at {rec.fs:g} Hz "
          f"({rec.duration_s:.2f} s) in {read_s:.1f} s; layout {rec.electrode} @ {rec.orientation}")

    out: dict = {"command": " ".join([sys.executable] + sys.argv), "commit": _commit(), "machine": _machine(),
                 "settings": {**vars(a), "n_samples": rec.n_samples, "n_channels": rec.n_channels},
                 "data": {"file": data.name, "fs_hz": rec.fs, "duration_s": rec.duration_s,
                          "electrode": rec.electrode, "orientation": rec.orientation}, "methods": {}}
    decs = {}
    for m in a.methods:
        kw = {"seed": a.seed}
        if m == "bmiss":
            kw["anatomy"] = a.anatomy
        print(f"[{m}] decomposing ...", flush=True)
        t = time.perf_counter()
        try:
            dec = api.decompose(rec, m, progress=True, **kw)
        except Exception as e:  # noqa: BLE001  (record the failure, keep the other method's numbers)
            out["methods"][m] = {"error": f"{type(e).__name__}: {e}", "time_s": round(time.perf_counter() - t, 1)}
            print(f"[{m}] failed: {type(e).__name__}: {e}", flush=True)
            continue
        dt = time.perf_counter() - t
        decs[m] = dec
        row = {"time_s": round(dt, 1), **_unit_table(dec, rec.fs),
               "extension_R": (dec.meta.get("settings") or {}).get("R"),
               "timing_s": dec.meta.get("timing_s"),
               **{k: dec.meta.get(k) for k in ("n_candidates", "n_rejected_sil", "n_rejected_spikes", "n_duplicates")},
               "layout": {k: dec.meta.get("layout", {}).get(k) for k in ("electrode", "orientation", "ied_mm")}}
        out["methods"][m] = row
        print(f"[{m}] {dec.n_units} units in {dt:.1f} s; median SIL {row['median_sil']}, PNR {row['median_pnr_db']} dB, "
              f"CoV ISI {row['median_cov_isi']}; rates {row['rate_range_hz']} Hz", flush=True)
    if len(decs) == 2:
        out["agreement_cbss_vs_bmiss"] = _agreement(decs["cbss"], decs["bmiss"], rec.fs)
        print(f"cbss vs bmiss: {out['agreement_cbss_vs_bmiss']['matched_90']} units matched at RoA >= 0.9")

    # --- do the rules scale with fs?  Same EMG at 2048 Hz (decimated by 5, anti-aliased).
    r = Rules()
    rules = {"R_samples_default": "round(1000 / n_good_channels) (samples, independent of fs)",
             "min_distance_ms": r.min_distance_ms, "dup_tol_ms": r.dup_tol_ms, "peel_ms": r.peel_ms}
    for fs_ in (rec.fs, rec.fs / 5):
        rules[f"at_{fs_:g}_hz"] = {
            "R_ms": round(16 / fs_ * 1e3, 3),
            "min_distance_samples": quality.min_distance_samples(fs_, r.min_distance_ms),
            "min_distance_ms_back": round(quality.min_distance_samples(fs_, r.min_distance_ms) / fs_ * 1e3, 3),
            "dup_tol_samples": quality.tol_samples(r.dup_tol_ms, fs_),
        }
    out["fs_rules"] = rules
    if not a.no_fs_check:
        from scipy.signal import resample_poly

        low = Recording(emg=resample_poly(rec.emg, 1, 5, axis=1).astype(np.float32), fs=rec.fs / 5,
                        electrode=rec.electrode, orientation=rec.orientation)
        for m in a.fs_check_methods:
            kw = {"seed": a.seed, **({"anatomy": a.anatomy} if m == "bmiss" else {})}
            print(f"[{m} @ {low.fs:g} Hz] decomposing the decimated copy ...", flush=True)
            t = time.perf_counter()
            dlow = api.decompose(low, m, progress=True, **kw)
            dt = time.perf_counter() - t
            row = {"time_s": round(dt, 1), **_unit_table(dlow, low.fs),
                   **{k: dlow.meta.get(k) for k in ("n_candidates", "n_rejected_sil", "n_rejected_spikes",
                                                     "n_duplicates")}}
            out["methods"][f"{m}_at_{low.fs:g}_hz"] = row
            msg = f"[{m} @ {low.fs:g} Hz] {dlow.n_units} units in {dt:.1f} s"
            if m in decs:
                agr = _agreement(decs[m], dlow, rec.fs, fs_b=low.fs)
                out[f"agreement_{m}_{rec.fs:g}_vs_{low.fs:g}"] = agr
                msg += f"; matched to the {rec.fs:g}-Hz run at RoA>=0.9: {agr['matched_90']}"
            print(msg, flush=True)
    out["machine_after"] = _machine()
    write_json(a.json, out)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
