"""Command line: ``bmiss simulate | decompose | evaluate | export | figures | anatomies | demo``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _check_out(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")


def _parse_grid(s: str | None):
    if s is None:
        return None
    try:
        r, c = s.lower().split("x")
        return int(r), int(c)
    except ValueError:
        raise SystemExit(f"--grid must look like ROWSxCOLS (e.g. 13x5), got {s!r}") from None


def cmd_simulate(a) -> int:
    from . import api, io

    out = Path(a.out)
    _check_out(out, a.force)
    rec = api.simulate(a.anatomy, duration_s=a.duration, snr_db=None if a.snr is None or a.snr.lower() in ("inf", "none") else float(a.snr),
                       seed=a.seed, excitation=a.excitation, n_units=a.n_units, muap_mode=a.muap_mode,
                       powerline_uv=a.powerline_uv)
    io.save_recording(out, rec, force=True)
    active = sum(len(s) > 0 for s in rec.true_spikes)
    print(f"wrote {out}: {rec.n_channels} channels x {rec.n_samples} samples at {rec.fs:g} Hz, "
          f"{len(rec.true_spikes)} MUs ({active} active), SNR {a.snr} dB, {rec.meta['simulate_time_s']} s")
    if a.figures:
        from . import figures

        fig_path = out.with_suffix(".png")
        figures.simulation_overview(rec, path=fig_path)
        print(f"wrote {fig_path}")
    return 0


def cmd_decompose(a) -> int:
    from . import api, io

    rec = io.load_recording(a.recording)
    out = Path(a.out) if a.out else Path(a.recording).with_name(Path(a.recording).stem + f"_{a.method}.npz")
    _check_out(out, a.force)
    kw = {}
    if a.seed is not None:
        kw["seed"] = a.seed
    if a.n_iter is not None:
        kw["n_iter" if a.method == "cbss" else "n_rounds"] = a.n_iter
    if a.method == "bmiss":
        kw.update(anatomy=a.anatomy, grid=_parse_grid(a.grid), ied_mm=a.ied, forward=a.forward)
    elif any(v is not None for v in (a.anatomy, a.grid, a.ied)) or a.forward != "conductor":
        print("note: --anatomy/--grid/--ied/--forward apply to --method bmiss only; ignored", file=sys.stderr)
    t = time.perf_counter()
    dec = api.decompose(rec, a.method, progress=not a.quiet, **kw)
    for line in dec.meta.get("excluded_channels", []) or []:
        print(f"excluded channel: {line}", file=sys.stderr)
    io.save_decomposition(out, dec, force=True)
    print(f"wrote {out}: {dec.n_units} MUs by {a.method} in {time.perf_counter() - t:.1f} s")
    if rec.has_truth and not a.quiet:
        rep = api.evaluate(dec, rec)
        s = rep["summary"]
        print(f"against the recording's ground truth: {s['found_90']} MUs at RoA >= 0.9, {s['found_80']} at >= 0.8, "
              f"{s['n_false']} false, {s['n_duplicates']} duplicates (of {s['n_true']} true MUs)")
    return 0


def cmd_evaluate(a) -> int:
    from . import api, io, metrics

    rep = api.evaluate(a.decomposition, a.truth, oracle=a.oracle)
    print(metrics.format_report(rep))
    if a.json:
        text = json.dumps(rep, indent=1)
        io.atomic_write(a.json, lambda tmp: Path(tmp).write_text(text), force=True)
        print(f"wrote {a.json}")
    return 0


def cmd_export(a) -> int:
    from . import api

    p = api.export(a.decomposition, a.out, a.format, rec=a.recording, force=a.force)
    print(f"wrote {p}")
    return 0


def cmd_figures(a) -> int:
    from . import figures, io

    rec = io.load_recording(a.recording)
    outdir = Path(a.out)
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    if rec.true_muaps is not None:
        written.append(figures.simulation_overview(rec, path=outdir / "overview.png") and outdir / "overview.png")
        written.append(figures.muap_map(rec.true_muaps, rec.channel_map, rec.grid_shape, rec.fs,
                                        units=a.units, path=outdir / "muaps.png") and outdir / "muaps.png")
    written.append(figures.emg_stretch(rec.emg, rec.fs, path=outdir / "emg.png") and outdir / "emg.png")
    if a.decomposition:
        dec = io.load_decomposition(a.decomposition)
        written.append(figures.raster(dec.spikes, dec.fs, excitation=rec.excitation, n_samples=rec.n_samples,
                                      path=outdir / "raster.png") and outdir / "raster.png")
        if rec.has_truth:
            from . import api

            rep = api.evaluate(dec, rec)
            written.append(figures.decomposition_vs_truth(dec, rec, rep, path=outdir / "vs_truth.png")
                           and outdir / "vs_truth.png")
    for w in written:
        print(f"wrote {w}")
    return 0


def cmd_anatomies(a) -> int:
    from . import anatomy

    for name in anatomy.list_anatomies():
        an = anatomy.load(name)
        print(f"{name:20s} {an.grid.rows}x{an.grid.cols} @ {an.grid.ied_mm:g} mm, {an.grid.n_channels} ch, "
              f"{an.pool.n_units} MUs  {an.description}")
    return 0


def cmd_demo(a) -> int:
    """simulate -> decompose (bmiss, and cbss/oracle for comparison) -> evaluate -> figures."""
    from . import api, figures, io, metrics

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/4] simulating {a.anatomy}: {a.duration} s, {a.n_units} MUs, SNR {a.snr} dB (seed {a.seed})")
    rec = api.simulate(a.anatomy, duration_s=a.duration, snr_db=a.snr, seed=a.seed, n_units=a.n_units)
    io.save_recording(out / "recording.npz", rec)
    figures.simulation_overview(rec, path=out / "simulation.png")
    results = {}
    oracle_found = None
    methods = ["oracle", "cbss", "bmiss"] if not a.bmiss_only else ["bmiss"]
    for i, m in enumerate(methods):
        print(f"[2/4] decomposing with {m}")
        t = time.perf_counter()
        dec = api.decompose(rec, m, progress=True, seed=a.seed)
        dt = time.perf_counter() - t
        io.save_decomposition(out / f"decomposition_{m}.npz", dec)
        if m == "oracle":
            oracle_found = api.oracle_identifiable(rec, oracle=dec)
        rep = api.evaluate(dec, rec, oracle_found=oracle_found)
        results[m] = {"summary": rep["summary"], "time_s": round(dt, 2), "property_errors": rep.get("property_errors")}
        with open(out / f"report_{m}.json", "w") as f:
            json.dump(rep, f, indent=1)
        if m == "bmiss":
            figures.decomposition_vs_truth(dec, rec, rep, path=out / "bmiss_vs_truth.png")
            api.export(dec, out / "bmiss_units.csv", "csv", force=True)
    print("[3/4] evaluation (RoA = TP/(TP+FP+FN), ±0.5 ms after the best lag within ±30 ms)")
    print(f"{'method':8s} {'found>=0.9':>10s} {'found>=0.8':>10s} {'false':>6s} {'dup':>4s} {'yield':>6s} {'time s':>7s}")
    for m, r in results.items():
        s = r["summary"]
        y = s.get("yield_90")
        print(f"{m:8s} {s['found_90']:>10d} {s['found_80']:>10d} {s['n_false']:>6d} {s['n_duplicates']:>4d} "
              f"{'-' if y is None else f'{y:.2f}':>6s} {r['time_s']:>7.1f}")
    if results.get("bmiss", {}).get("property_errors"):
        print("bmiss MU property errors on matched units (normalised RMSE by the anatomy bounds):")
        for k, v in results["bmiss"]["property_errors"].items():
            if isinstance(v, dict) and "nrmse" in v:
                print(f"  {k:12s} MAE {v.get('mae', float('nan')):.3g}  nRMSE {v['nrmse']:.3g}")
    with open(out / "demo_summary.json", "w") as f:
        json.dump(metrics._jsonable({"config": vars(a), "results": results}), f, indent=1, default=str)
    print(f"[4/4] figures and files in {out}/ (simulation.png, bmiss_vs_truth.png, bmiss_units.csv, report_*.json)"
          f"; total {time.perf_counter() - t0:.0f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bmiss", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("simulate", help="simulate an HD-EMG recording with ground truth")
    s.add_argument("--anatomy", default="biceps_brachii", help="shipped anatomy name or TOML path")
    s.add_argument("--duration", type=float, default=20.0, help="seconds")
    s.add_argument("--snr", default="20", help="dB, or 'inf' for noise-free")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--excitation", default=None,
                   help="constant:L | trapezoid:L[:ramp=S] | sinusoid:MEAN:AMP:HZ | file:PATH.npy "
                        "(default trapezoid:0.3 with 2-s ramps)")
    s.add_argument("--n-units", type=int, default=None, help="override the anatomy's pool size")
    s.add_argument("--muap-mode", choices=("fibres", "expected"), default="fibres")
    s.add_argument("--powerline-uv", type=float, default=0.0, help="50 Hz interference amplitude, µV")
    s.add_argument("--figures", action="store_true", help="also save an overview PNG next to --out")
    s.add_argument("--out", required=True, help="recording .npz to write")
    s.add_argument("--force", action="store_true", help="overwrite an existing output")
    s.set_defaults(func=cmd_simulate)

    d = sub.add_parser("decompose", help="decompose a recording into MU spike trains")
    d.add_argument("recording", help=".npz recording (or .otb+, .mat, openhdemg .json)")
    d.add_argument("--method", choices=("bmiss", "cbss", "oracle"), default="bmiss")
    d.add_argument("--out", help="decomposition .npz (default: RECORDING_METHOD.npz)")
    d.add_argument("--anatomy", default=None, help="bmiss: anatomy for the forward model (default: the recording's or biceps_brachii)")
    d.add_argument("--grid", default=None, help="bmiss: ROWSxCOLS of the recording's grid (channels row-major)")
    d.add_argument("--ied", type=float, default=None, help="bmiss: inter-electrode distance, mm")
    d.add_argument("--forward", choices=("conductor", "surrogate"), default="conductor", help="bmiss forward model")
    d.add_argument("--n-iter", type=int, default=None, help="cbss: outer iterations; bmiss: rounds")
    d.add_argument("--seed", type=int, default=None)
    d.add_argument("--quiet", action="store_true")
    d.add_argument("--force", action="store_true")
    d.set_defaults(func=cmd_decompose)

    e = sub.add_parser("evaluate", help="score a decomposition against simulation ground truth")
    e.add_argument("decomposition")
    e.add_argument("--truth", required=True, help="the simulated recording .npz")
    e.add_argument("--oracle", action="store_true", help="also report yield as a fraction of the oracle-identifiable MUs")
    e.add_argument("--json", default=None, help="write the full report here")
    e.set_defaults(func=cmd_evaluate)

    x = sub.add_parser("export", help="export a decomposition (openhdemg JSON, CSV, events TSV, JSON)")
    x.add_argument("decomposition")
    x.add_argument("--out", required=True)
    x.add_argument("--format", choices=("openhdemg", "csv", "tsv", "json"), default=None)
    x.add_argument("--recording", default=None, help="needed for openhdemg (RAW_SIGNAL)")
    x.add_argument("--force", action="store_true")
    x.set_defaults(func=cmd_export)

    f = sub.add_parser("figures", help="MUAP map, raster, EMG stretch (and estimate vs truth)")
    f.add_argument("recording")
    f.add_argument("--decomposition", default=None)
    f.add_argument("--units", type=int, nargs="*", default=None)
    f.add_argument("--out", default="figures")
    f.set_defaults(func=cmd_figures)

    an = sub.add_parser("anatomies", help="list shipped anatomies")
    an.set_defaults(func=cmd_anatomies)

    m = sub.add_parser("demo", help="simulate -> decompose -> evaluate -> figures on the default anatomy")
    m.add_argument("--anatomy", default="biceps_brachii")
    m.add_argument("--duration", type=float, default=10.0)
    m.add_argument("--snr", type=float, default=20.0)
    m.add_argument("--n-units", type=int, default=60)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--bmiss-only", action="store_true", help="skip the oracle and cbss comparison")
    m.add_argument("--out", default="demo_out")
    m.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"bmiss {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
