"""Benchmark the amortized MU-property posterior (bmiss.posterior) against the optimisation.

    python experiments/bench_posterior.py --json results/bench_posterior.json

Parts (each can be left out with --skip):

* ``heldout``: fresh simulated MUAPs from the training generator with a seed it never used
  (every grid, tissue, fs and IAP in its range): RMSE and interval coverage, tissue known / unknown.
* ``recordings``: recordings made by OTHER paths than the training generator, with
  ``bmiss.simulate`` (whole pool, per-fibre MUAPs with all fibres, EMG synthesis, noise):
  ``iap`` (gamma2 IAP), ``rotated`` (grid turned 10 deg, not told), ``short`` (35-mm fibres,
  1-mm end scatter), ``tissue`` (fat 4.5 mm, sigma_r 0.15, skin 0.5 S/m; nominal values told),
  ``large`` (per-fibre vastus lateralis, 22-mm thick muscle, 8x8 grid at 10 mm, 4-mm electrodes),
  ``hermite`` (non-physical MUAPs: domain flags only). Units with >= --min-discharges true
  discharges; averages from the TRUE discharges (bmiss.templates.spike_triggered_muaps), so the
  benchmark measures the property estimate, not the decomposition. The network is told the
  nominal anatomy's fat, skin and anisotropy (what the pipeline reads before any fit) or nothing.
  Baseline in the same run: ``bmiss.fit.fit`` (subject fit on the oracle decomposition, i.e. true
  spikes) + ``bmiss.fit.fit_units`` on the same units (--baseline none skips it).
* ``real``: the GR10MM0808 recording in ../shared/data: cbss units, the posterior's intervals and
  domain flags (no truth).

Metrics per property: RMSE (length as relative error), share of true values inside the 68 % and
95 % intervals (baseline: mean +- 1 and 1.96 std), time of 20 units after load and warm-up.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bmiss  # noqa: E402
from bmiss import anatomy as anatomy_mod  # noqa: E402
from bmiss import electrodes, files  # noqa: E402
from bmiss import posterior as P  # noqa: E402
from bmiss.posterior import features as F  # noqa: E402
from bmiss.posterior import simulate as S  # noqa: E402
from bmiss.templates import spike_triggered_muaps  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "scd_example_gr10mm0808_10240hz.mat"
NAMES = P.PARAM_NAMES
RECORDINGS = {
    "iap": ("biceps_brachii", {"iap": "gamma2"}),
    "rotated": ("biceps_brachii", {"grid_rotation_deg": 10.0}),
    "short": ("biceps_brachii", {"muscle_overrides": {"fibre_length_mm": 35.0, "fibre_length_spread_mm": 2.0,
                                                      "end_jitter_mm": 1.0}}),
    "tissue": ("biceps_brachii", {"tissue_overrides": {"fat_thickness_mm": 4.5, "muscle_conductivity_radial": 0.15,
                                                       "skin_conductivity": 0.5}}),
    "large": ("vastus_lateralis", {"electrode": "GR10MM0808"}),
    "hermite": ("biceps_brachii", {"muap_family": "hermite"}),
}
TARGETS = {"depth_mm": 1.5, "x_mm": 1.5, "iz_mm": 2.0, "cv_m_s": 0.1, "length_mm": 0.05}


def metrics(mean, lo68, hi68, lo95, hi95, truth) -> dict:
    out = {}
    for j, n in enumerate(NAMES):
        t = truth[:, j]
        ok = np.isfinite(mean[:, j]) & np.isfinite(t)
        if not ok.any():
            out[n] = {"n": 0}
            continue
        err = mean[ok, j] - t[ok]
        if n == "length_mm":
            err = err / t[ok]
        out[n] = {"n": int(ok.sum()), "rmse": float(np.sqrt(np.mean(err**2))), "bias": float(np.mean(err)),
                  "cover68": float(np.mean((t[ok] >= lo68[ok, j]) & (t[ok] <= hi68[ok, j]))),
                  "cover95": float(np.mean((t[ok] >= lo95[ok, j]) & (t[ok] <= hi95[ok, j])))}
        if n == "length_mm":
            out[n]["unit"] = "relative"
        if n in TARGETS:
            out[n]["target_rmse"] = TARGETS[n]
    return out


def post_metrics(post, truth, sel=None) -> dict:
    sel = np.ones(len(truth), bool) if sel is None else sel
    q = post.q
    return metrics(post.mean[sel], q["0.16"][sel], q["0.84"][sel], q["0.025"][sel], q["0.975"][sel], truth[sel])


def heldout(n_batches: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    pm = P.load()
    res = {}
    th_all, enc_all = [], []
    for _ in range(n_batches):
        b = int(rng.choice(len(S._TOP_EDGES) - 1, p=np.diff(S._TOP_EDGES) / np.diff(S._TOP_EDGES).sum()))
        d = S.simulate_batch(rng, 32, b, float(rng.choice(S.FS_CHOICES)))
        e = F.encode(d["muaps"], d["noise_std"], d["t_ms"], d["pos"], d["radius_mm"], d["fs"], n_el=d["n_el"],
                     window_ms=d["window_ms"])
        th = d["theta"].copy()
        th[:, 1] -= e["centre"][:, 0]
        th[:, 3] -= e["centre"][:, 1]
        th_all.append(th)
        enc_all.append((e, {k: d[k] for k in F.TISSUE_KEYS}, d["pnr"]))
    th = np.concatenate(th_all)
    pnr = np.concatenate([x[2] for x in enc_all])
    for mode in ("tissue_unknown", "tissue_known"):
        mix = np.concatenate([pm.mixtures(e["tokens"], e["mask"], F.globals_with_tissue(
            e["globals_base"], tis if mode == "tissue_known" else {})) for e, tis, _ in enc_all])
        s = P.summarise_mixture(mix)
        q = s["q"]
        res[mode] = metrics(s["mean"], q["0.16"], q["0.84"], q["0.025"], q["0.975"], th)
        hi = pnr >= 30
        res[mode + "_pnr_ge_30"] = metrics(s["mean"][hi], q["0.16"][hi], q["0.84"][hi], q["0.025"][hi],
                                           q["0.975"][hi], th[hi])
    res["n"] = int(len(th))
    return res


def layout_and_diameter(rec, a):
    lay = electrodes.layout_of(rec)
    pos = lay.positions_mm() if lay is not None else None
    diam = (lay.electrode_diameter_mm if lay is not None and lay.electrode_diameter_mm else 2 * a.grid.electrode_radius_mm)
    return pos, float(diam)


def nominal_tissue(a) -> dict:
    L = a.layers
    return {"fat_mm": L.fat_thickness_mm, "skin_mm": L.skin_thickness_mm,
            "anisotropy": L.muscle_conductivity_longitudinal / L.muscle_conductivity_radial,
            "grid_centre_x_mm": a.grid.centre_x_mm, "grid_centre_z_mm": a.grid.centre_z_mm}


def time_20(tpl, pos, diam, tissue) -> float:
    from dataclasses import replace

    idx = np.arange(20) % tpl.n_units
    t20 = replace(tpl, muaps=tpl.muaps[idx], noise_std=tpl.noise_std[idx])
    P.unit_properties(t20, pos, diam, tissue)  # warm (compile for 32 padded units)
    t = time.perf_counter()
    P.unit_properties(t20, pos, diam, tissue)
    return round(time.perf_counter() - t, 3)


def _simulated(name, duration, n_units, seed, snr, cache):
    """The recording (bmiss.simulate is deterministic in its seed; cached as a pickle in ``cache``)."""
    import pickle

    aname, kw = RECORDINGS[name]
    p = Path(cache) / f"rec_{name}_d{duration:g}_n{n_units}_s{seed}_snr{snr:g}.pkl" if cache else None
    t = time.perf_counter()
    if p is not None and p.exists():
        return pickle.loads(p.read_bytes()), None
    rec = bmiss.simulate(anatomy_mod.load(aname), duration_s=duration, snr_db=snr, seed=seed, n_units=n_units, **kw)
    dt = round(time.perf_counter() - t, 1)
    if p is not None:
        files.atomic_write(p, lambda tmp: Path(tmp).write_bytes(pickle.dumps(rec)))
    return rec, dt


def recording(name: str, duration, n_units, seed, min_dis, baseline, snr, cache=None, baseline_only=False) -> dict:
    aname, kw = RECORDINGS[name]
    rec, sim_s = _simulated(name, duration, n_units, seed, snr, cache)
    row = {"recording": name, "anatomy": aname, "options": kw, "snr_db": snr, "simulate_s": sim_s}
    a_nom = anatomy_mod.load(aname)
    pos, diam = layout_and_diameter(rec, a_nom)
    lo = int(np.ceil(20e-3 * rec.fs))
    hi = int(np.ceil(80e-3 * rec.fs))
    cnt = np.array([np.sum((np.asarray(s) >= lo) & (np.asarray(s) + hi <= rec.n_samples)) for s in rec.true_spikes])
    units = np.flatnonzero(cnt >= min_dis)
    tpl = spike_triggered_muaps(rec.emg, [rec.true_spikes[i] for i in units], rec.fs)
    truth = np.asarray(rec.true_params, np.float64)[units]
    row["n_units"] = int(len(units))
    row["n_discharges_median"] = float(np.median(cnt[units])) if len(units) else 0.0
    if not baseline_only:
        row["posterior"] = _posterior_rows(name, tpl, truth, pos, diam, a_nom)
    if baseline in ("fit", "cached") and name != "hermite":
        bkey = Path(cache) / f"baseline_{name}_d{duration:g}_n{n_units}_s{seed}_snr{snr:g}_m{min_dis}.json" if cache else None
        if bkey is not None and bkey.exists():
            import json

            row["baseline_fit"] = json.loads(bkey.read_text())
            row["baseline_fit"]["cached"] = str(bkey)
        elif baseline == "cached":
            row["baseline_fit"] = {"error": "not run in this invocation (--baseline cached and no cached result)"}
        else:
            row["baseline_fit"] = _baseline(rec, units, truth, seed)
            row["baseline_fit"]["provenance"] = files.provenance()
            if bkey is not None and "metrics" in row["baseline_fit"]:
                files.write_json(bkey, row["baseline_fit"])
    return row


def _posterior_rows(name, tpl, truth, pos, diam, a_nom) -> dict:
    res = {}
    for mode, tis in (("tissue_nominal", nominal_tissue(a_nom)), ("tissue_unknown", {})):
        t = time.perf_counter()
        post = P.unit_properties(tpl, pos, diam, tis)
        dt = time.perf_counter() - t
        r = {"time_s_first_call": round(dt, 3), "in_domain": int(post.in_domain.sum()),
             "reasons": sorted({x.split(" (")[0] for rr in post.reasons for x in rr}),
             "pnr_median": float(np.median(post.meta["pnr"]))}
        if name != "hermite":
            r["all"] = post_metrics(post, truth)
            r["in_domain_only"] = post_metrics(post, truth, post.in_domain) if post.in_domain.any() else {}
        else:
            r["median_width95"] = {n: float(np.median(post.q["0.975"][:, j] - post.q["0.025"][:, j]))
                                   for j, n in enumerate(NAMES)}
        res[mode] = r
    res["time_s_20_units"] = time_20(tpl, pos, diam, nominal_tissue(a_nom))
    return res


def _baseline(rec, units, truth, seed) -> dict:
    """bmiss.fit.fit (subject, on the oracle decomposition = true spikes) + fit_units on the same units."""
    from bmiss import api
    from bmiss import fit as fit_mod

    t = time.perf_counter()
    try:
        orc = api.decompose(rec, "oracle", progress=False)
        sf = fit_mod.fit(rec, decomposition=orc, progress=False, seed=seed)
        t_sub = time.perf_counter() - t
        t = time.perf_counter()
        uf = fit_mod.fit_units(sf, rec, [rec.true_spikes[i] for i in units], seed=seed)
        t_u = time.perf_counter() - t
        est = np.array(uf.params, np.float64)
        sd = np.array(uf.std, np.float64)
        v = {k: val for k, (val, _) in sf.subject.items()}
        est[:, 3] -= v.get("dz_mm", 0.0)  # IZ in the fibre-midpoint frame (bench_mismatch.fit_accuracy)
        m = metrics(est, est - sd, est + sd, est - 1.96 * sd, est + 1.96 * sd, truth)
        n_fit = int(np.isfinite(est[:, 0]).sum())
        n20 = 20.0 / max(n_fit, 1)
        return {"metrics": m, "subject_fit_s": round(t_sub, 1), "unit_fit_s": round(t_u, 1),
                "unit_fit_s_per_20_units": round(t_u * n20, 1), "unit_fit_timing": uf.timing, "n_fitted": n_fit,
                "status": sorted(set(uf.status)), "subject": v}
    except Exception as e:  # noqa: BLE001 - report the baseline's failure, keep the posterior's row
        return {"error": f"{type(e).__name__}: {e}"}


def real(max_s: float) -> dict:
    if not DATA.is_file():
        return {"note": f"{DATA} absent"}
    from bmiss import api
    from bmiss.io import Recording

    rec = bmiss.io.load_recording(DATA, fs=10240.0, electrode="GR10MM0808")
    if max_s and rec.duration_s > max_s:
        n = int(max_s * rec.fs)
        rec = Recording(emg=rec.emg[:, :n], fs=rec.fs, electrode=rec.electrode, orientation=rec.orientation,
                        channel_map=rec.channel_map, grid_shape=rec.grid_shape, ied_mm=rec.ied_mm, meta=rec.meta)
    t = time.perf_counter()
    dec = api.decompose(rec, "cbss", progress=False, seed=0)
    t_dec = time.perf_counter() - t
    lo, hi = int(np.ceil(20e-3 * rec.fs)), int(np.ceil(80e-3 * rec.fs))
    keep = [i for i, s in enumerate(dec.spikes) if np.sum((s >= lo) & (s + hi <= rec.n_samples)) >= 10]
    tpl = spike_triggered_muaps(rec.emg, [dec.spikes[i] for i in keep], rec.fs)
    lay = electrodes.layout_of(rec)
    a = anatomy_mod.load("vastus_lateralis")
    diam = lay.electrode_diameter_mm or 4.0
    post = P.unit_properties(tpl, lay.positions_mm(), diam, nominal_tissue(a))
    post_u = P.unit_properties(tpl, lay.positions_mm(), diam, {})
    r = {"file": DATA.name, "duration_s": rec.duration_s, "cbss_units": dec.n_units, "averaged_units": len(keep),
         "cbss_s": round(t_dec, 1), "tissue_told": "vastus_lateralis nominal", "in_domain": int(post.in_domain.sum()),
         "reasons": [list(x) for x in post.reasons],
         "units": [{n: [round(float(post.mean[i, j]), 2), round(float(post.q["0.025"][i, j]), 2),
                        round(float(post.q["0.975"][i, j]), 2)] for j, n in enumerate(NAMES)} for i in range(len(keep))],
         "median_width95": {n: float(np.median(post.q["0.975"][:, j] - post.q["0.025"][:, j])) for j, n in enumerate(NAMES)},
         "median_width95_tissue_unknown": {n: float(np.median(post_u.q["0.975"][:, j] - post_u.q["0.025"][:, j]))
                                           for j, n in enumerate(NAMES)},
         "time_s_20_units": time_20(tpl, lay.positions_mm(), diam, nominal_tissue(a))}
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recordings", nargs="+", default=list(RECORDINGS))
    ap.add_argument("--skip", nargs="*", default=[], choices=["heldout", "recordings", "real"])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--n-units", type=int, default=None, help="pool size (default: the anatomy's)")
    ap.add_argument("--snr", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-discharges", type=int, default=30)
    ap.add_argument("--heldout-batches", type=int, default=16)
    ap.add_argument("--heldout-seed", type=int, default=3)
    ap.add_argument("--baseline", choices=["fit", "cached", "none"], default="fit",
                    help="fit: run (or reuse from --cache) the optimisation; cached: only reuse; none: skip")
    ap.add_argument("--baseline-recordings", nargs="*", default=None, help="run the fit baseline only on these")
    ap.add_argument("--real-seconds", type=float, default=0.0, help="crop the real recording (0: all of it)")
    ap.add_argument("--cache", default="/work/cache_posterior",
                    help="where simulated recordings and baseline results are cached ('' : none)")
    ap.add_argument("--baseline-only", action="store_true", help="only simulate and run the fit baseline (fills --cache)")
    ap.add_argument("--json", default=str(ROOT / "results" / "bench_posterior.json"))
    a = ap.parse_args(argv)
    if a.baseline_only:
        for name in a.recordings:
            if a.baseline_recordings is None or name in a.baseline_recordings:
                r = recording(name, a.duration, a.n_units, a.seed, a.min_discharges, "fit", a.snr, a.cache, True)
                print(name, r.get("baseline_fit", {}).get("metrics", r.get("baseline_fit")), flush=True)
        return 0
    doc = {"provenance": files.provenance(**vars(a)), "weights": P.load().meta.get("provenance", {}).get("git_commit"),
           "weights_validation": P.load().meta.get("validation"), "targets": TARGETS}
    t0 = time.perf_counter()

    def save():
        doc["total_s"] = round(time.perf_counter() - t0, 1)
        files.write_json(a.json, doc)

    if "heldout" not in a.skip:
        doc["heldout"] = heldout(a.heldout_batches, a.heldout_seed)
        print("heldout", {k: round(v["rmse"], 3) for k, v in doc["heldout"]["tissue_unknown"].items()}, flush=True)
        save()
    if "recordings" not in a.skip:
        doc["recordings"] = []
        for name in a.recordings:
            base = a.baseline if (a.baseline_recordings is None or name in a.baseline_recordings) else "none"
            row = recording(name, a.duration, a.n_units, a.seed, a.min_discharges, base, a.snr, a.cache)
            doc["recordings"].append(row)
            pn = row["posterior"]["tissue_nominal"]
            print(name, row["n_units"], "in-domain", pn["in_domain"],
                  {k: (round(v.get("rmse", np.nan), 3), round(v.get("cover95", np.nan), 2))
                   for k, v in pn.get("all", {}).items()}, flush=True)
            if "baseline_fit" in row and "metrics" in row["baseline_fit"]:
                print("   fit", {k: (round(v.get("rmse", np.nan), 3), round(v.get("cover95", np.nan), 2))
                                 for k, v in row["baseline_fit"]["metrics"].items()}, flush=True)
            save()
    if "real" not in a.skip:
        doc["real"] = real(a.real_seconds)
        print("real", doc["real"].get("in_domain"), doc["real"].get("median_width95"), flush=True)
    doc["load_after"] = files.provenance()["load_avg"] if "load_avg" in files.provenance() else None
    save()
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
