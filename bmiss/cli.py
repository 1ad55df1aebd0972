"""Command line: ``bmiss simulate | decompose | evaluate | export | figures | fit | anatomies | demo``."""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from .errors import BmissError, UserError

# Errors caused by what the user asked for or gave: one line, exit 2. Anything else is a bug in
# bmiss: traceback, a hint to report it, exit 1 (a blanket ValueError catch would hide bugs).
USER_ERRORS = (BmissError, FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
               PermissionError)
SEED_MAX = 2 ** 32 - 1


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``bmiss CMD: error: ...``) instead of the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_in(lo: int, hi: int):
    """argparse type: an integer in [lo, hi]."""
    def conv(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in {lo}..{hi}, got {s!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is out of range; allowed {lo}..{hi}")
        return v

    return conv


def _float_in(lo: float, hi: float, *, lo_open: bool = False, unit: str = "", inf_ok: bool = False):
    """argparse type: a finite float in [lo, hi] ((lo, hi] with lo_open); 'inf'/'none' -> None if inf_ok."""
    rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]{(' ' + unit) if unit else ''}" + (" or inf" if inf_ok else "")

    def conv(s):
        if inf_ok and s.strip().lower() in ("inf", "+inf", "none", "noise-free"):
            return None
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {rng}, got {s!r}") from None
        if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
            raise argparse.ArgumentTypeError(f"{s} is out of range; allowed {rng}")
        return v

    return conv


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _check_outputs(paths, force: bool, inputs=()) -> list[Path]:
    """Refuse, before any work starts, outputs that cannot or must not be written.

    Refused: an existing file without ``force``; a folder given as a file (even with ``force``);
    an output that is also an input (``--json v.npz --truth v.npz``); two outputs with one name;
    an output whose folder cannot be created or written.
    """
    ins = [Path(q) for q in inputs if q is not None]
    seen: list[Path] = []
    outs = [Path(p) for p in paths]
    for p in outs:
        if p.is_dir():
            raise IsADirectoryError(f"output {p} is a folder; give the path of a file (in it or elsewhere)")
        for q in ins:
            if _same_file(p, q):
                raise UserError(f"output {p} is also an input ({q}); write the output to another file")
        for q in seen:
            if _same_file(p, q):
                raise UserError(f"two outputs would be written to {p}; choose another name")
        seen.append(p)
        if p.exists() and not force:
            raise FileExistsError(f"{p} exists; pass --force to overwrite it, or choose another output")
        anc = p.absolute().parent
        while not anc.exists():
            anc = anc.parent
        if not anc.is_dir():
            raise NotADirectoryError(f"cannot write {p}: {anc} is a file, not a folder")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write {p}: folder {anc} is not writable; choose another output")
    return outs


def _check_out(path: Path, force: bool) -> None:
    _check_outputs([path], force)


def _parse_grid(s):
    """'13x5' -> (13, 5); None and (rows, cols) pass through. Rows and cols must be >= 1."""
    if s is None or isinstance(s, tuple):
        return s
    try:
        r, c = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise UserError(f"--grid must look like ROWSxCOLS (e.g. 13x5), got {s!r}") from None
    if r < 1 or c < 1 or r * c > 4096:
        raise UserError(f"--grid {s}: rows and columns must be >= 1 (at most 4096 electrodes), got {r}x{c}")
    return r, c


def _geometry_args(p, who: str = "") -> None:
    """--electrode/--orientation/--grid/--ied/--missing: the electrode layout (see README "Electrode layouts")."""
    p.add_argument("--electrode", default=None, metavar="CODE",
                   help=f"{who}grid code (GR08MM1305, GR04MM1305, GR10MM0808, GR10MM0804, HD08MM1305, HD04MM1305, "
                        "HD10MM0808, HD10MM0804) or a channel-map .json/.csv; overrides the file's layout")
    p.add_argument("--orientation", type=int, choices=(0, 180), default=None,
                   help="of a named grid, degrees: 180 = connector towards the researcher (default), 0 = turned")
    if not any(o == "--grid" for act in p._actions for o in act.option_strings):
        p.add_argument("--grid", default=None, metavar="ROWSxCOLS",
                       help=f"{who}a plain grid whose channels run row by row (with --ied, --missing)")
        p.add_argument("--ied", type=_float_in(0, 100, lo_open=True, unit="mm"), default=None,
                       help="inter-electrode distance, mm, (0, 100]")
    p.add_argument("--missing", default=None, metavar="'r,c;r,c'",
                   help="with --grid: 0-based (row, col) of positions without an electrode, e.g. '0,0'")


def _geometry_kw(a) -> dict:
    """The geometry flags given, as keywords for api.decompose / electrodes.resolve_layout."""
    kw = {"electrode": a.electrode, "orientation": a.orientation, "grid": _parse_grid(a.grid),
          "ied_mm": a.ied, "missing": a.missing}
    return {k: v for k, v in kw.items() if v is not None}


def _apply_geometry(rec, a):
    """``rec`` with the layout that the flags describe (unchanged without flags)."""
    kw = _geometry_kw(a)
    if not kw:
        return rec
    from . import electrodes

    lay = electrodes.resolve_layout(rec, electrode=kw.get("electrode"), orientation=kw.get("orientation"),
                                    grid=kw.get("grid"), ied=kw.get("ied_mm"), missing=kw.get("missing"))
    return rec.with_layout(lay) if lay is not None else rec


def cmd_simulate(a) -> int:
    from . import api, io

    out = Path(a.out)
    fig_path = out.with_suffix(".png") if a.figures else None
    _check_outputs([out] + ([fig_path] if fig_path else []), a.force)
    an = _load_anatomy(a.anatomy)
    geo = _geometry_kw(a)
    if geo:  # simulate through the requested electrode layout instead of the anatomy's grid
        from . import electrodes

        an = an.with_layout(electrodes.resolve_layout(electrode=geo.get("electrode"), orientation=geo.get("orientation"),
                                                      grid=geo.get("grid"), ied=geo.get("ied_mm") or an.grid.ied_mm,
                                                      missing=geo.get("missing")))
    _check_excitation(a.excitation, a.duration, an.grid.fs_hz)
    rec = api.simulate(an, duration_s=a.duration, snr_db=a.snr, seed=a.seed, excitation=a.excitation,
                       n_units=a.n_units, muap_mode=a.muap_mode, powerline_uv=a.powerline_uv)
    io.save_recording(out, rec, force=a.force)
    active = sum(len(s) > 0 for s in rec.true_spikes)
    snr = "noise-free" if a.snr is None else f"SNR {a.snr:g} dB"
    print(f"wrote {out}: {rec.n_channels} channels x {rec.n_samples} samples at {rec.fs:g} Hz, "
          f"{len(rec.true_spikes)} MUs ({active} active), {snr}, {rec.meta['simulate_time_s']} s")
    if fig_path:
        from . import figures

        figures.simulation_overview(rec, path=fig_path)
        print(f"wrote {fig_path}")
    return 0


def _load_anatomy(spec):
    from . import anatomy

    return anatomy.load(spec)


def _check_excitation(spec, duration_s: float, fs: float) -> None:
    """Parse --excitation up front, so a bad spec fails before the simulation, in one line."""
    if spec is None:
        return
    from . import motoneurons

    try:
        motoneurons.parse_excitation(spec, duration_s, fs)
    except ValueError as e:  # parse_excitation's ValueErrors are all about the spec it was given
        raise UserError(f"--excitation {spec}: {e}") from None


def cmd_decompose(a) -> int:
    from . import api, io

    _parse_grid(a.grid)  # a bad --grid fails before any work
    out = Path(a.out) if a.out else Path(a.recording).with_name(Path(a.recording).stem + f"_{a.method}.npz")
    _check_outputs([out], a.force, inputs=[a.recording])
    rec = io.load_recording(a.recording, fs=a.fs)
    if a.method == "oracle" and rec.true_muaps is None:
        raise UserError(f"--method oracle needs the true MUAPs of a simulated recording; {a.recording} has none "
                        "(use --method cbss or bmiss)")
    kw = _geometry_kw(a)  # every method records the layout; bmiss needs one (file or flags)
    if a.seed is not None:
        kw["seed"] = a.seed
    if a.n_iter is not None:
        kw["n_iter" if a.method == "cbss" else "n_rounds"] = a.n_iter
    if a.extension_factor is not None:
        kw["R"] = a.extension_factor
    kw.update(_parse_settings(a.setting))
    if a.deconvolve is not None:
        kw["deconvolve"] = a.deconvolve
    if a.method == "bmiss":
        kw.update(anatomy=a.anatomy, forward=a.forward, init=a.init)
    elif a.anatomy is not None or a.forward != "conductor":
        print("note: --anatomy/--forward apply to --method bmiss only; ignored", file=sys.stderr)
    t = time.perf_counter()
    dec = api.decompose(rec, a.method, progress=not a.quiet, **kw)
    for line in dec.meta.get("excluded_channels", []) or []:
        print(f"excluded channel: {line}", file=sys.stderr)
    if out.exists() and not a.force:  # appeared while decomposing: keep it, and keep the result too
        alt = _free_name(out)
        io.save_decomposition(alt, dec, force=False)
        raise FileExistsError(f"{out} appeared while decomposing and was left as it is; the result was "
                              f"written to {alt} instead")
    io.save_decomposition(out, dec, force=a.force)
    print(f"wrote {out}: {dec.n_units} MUs by {a.method} in {time.perf_counter() - t:.1f} s")
    if rec.has_truth and not a.quiet:
        rep = api.evaluate(dec, rec)
        s = rep["summary"]
        print(f"against the recording's ground truth: {s['found_90']} MUs at RoA >= 0.9, {s['found_80']} at >= 0.8, "
              f"{s['n_false']} false, {s['n_duplicates']} duplicates (of {s['n_true']} true MUs)")
    return 0


def _parse_settings(items) -> dict:
    """``--setting KEY=VALUE`` (repeatable) -> keywords for the method's settings dataclasses
    (bmiss.pipeline.settings); values are Python literals (``0.85``, ``False``, ``(20, 450)``) or text."""
    import ast

    out = {}
    for it in items or ():
        if "=" not in it:
            raise UserError(f"--setting must look like KEY=VALUE (e.g. sil_threshold=0.85), got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            out[k.strip()] = v.strip()
    return out


def _free_name(path: Path) -> Path:
    for k in range(1, 1000):
        alt = path.with_name(f"{path.stem}.{k}{path.suffix}")
        if not alt.exists():
            return alt
    raise FileExistsError(f"no free name next to {path}")


def cmd_evaluate(a) -> int:
    from . import api, io, metrics

    if a.json:
        _check_outputs([a.json], a.force, inputs=[a.decomposition, a.truth])
    rep = api.evaluate(a.decomposition, a.truth, oracle=a.oracle)
    print(metrics.format_report(rep))
    if a.json:
        text = json.dumps(rep, indent=1)
        io.atomic_write(a.json, lambda tmp: Path(tmp).write_text(text), force=a.force)
        print(f"wrote {a.json}")
    return 0


def cmd_export(a) -> int:
    from . import api

    _check_outputs([a.out], a.force, inputs=[a.decomposition, a.recording])
    p = api.export(a.decomposition, a.out, a.format, rec=a.recording, force=a.force)
    print(f"wrote {p}")
    return 0


def cmd_figures(a) -> int:
    from . import api, figures, io

    # every input is read and checked before the first PNG is written
    rec = _apply_geometry(io.load_recording(a.recording, fs=a.fs), a)
    dec = io.load_decomposition(a.decomposition) if a.decomposition else None
    if dec is not None:
        api.check_pair(dec, rec, dec_name=a.decomposition, rec_name=a.recording)
    if a.units is not None and rec.true_muaps is not None:
        bad = [u for u in a.units if not 0 <= u < len(rec.true_muaps)]
        if bad:
            raise UserError(f"--units {' '.join(map(str, bad))}: the recording has MUs 0..{len(rec.true_muaps) - 1}")
    outdir = Path(a.out)
    if outdir.exists() and not outdir.is_dir():
        raise NotADirectoryError(f"--out {outdir} is a file; figures writes several PNGs into a folder")
    jobs = []
    if rec.true_muaps is not None:
        jobs.append(("overview.png", lambda p: figures.simulation_overview(rec, path=p)))
        jobs.append(("muaps.png", lambda p: figures.muap_map(rec.true_muaps, rec.channel_map, rec.grid_shape, rec.fs,
                                                             units=a.units, path=p)))
    jobs.append(("emg.png", lambda p: figures.emg_stretch(rec.emg, rec.fs, path=p)))
    if dec is not None:
        jobs.append(("raster.png", lambda p: figures.raster(dec.spikes, dec.fs, excitation=rec.excitation,
                                                           n_samples=rec.n_samples, path=p)))
        if dec.n_units:
            from . import drive, recruitment

            ref, ref_unit = recruitment.reference_signal(rec)
            jobs.append(("drive.png", lambda p: figures.drive_rates(drive.drive_of(dec, rec), reference=ref, path=p,
                                                                    ref_label=ref_unit or "reference")))
        if rec.has_truth:
            rep = api.evaluate(dec, rec, check=False)  # checked above
            jobs.append(("vs_truth.png", lambda p: figures.decomposition_vs_truth(dec, rec, rep, path=p)))
    paths = _check_outputs([outdir / name for name, _ in jobs], a.force, inputs=[a.recording, a.decomposition])
    outdir.mkdir(parents=True, exist_ok=True)
    for (_, draw), path in zip(jobs, paths):
        draw(path)
        print(f"wrote {path}")
    return 0


def _parse_fix(items) -> tuple[tuple, dict]:
    """``--fix NAME`` / ``--fix NAME=VALUE`` -> (names, values) for :func:`bmiss.fit.fit`."""
    from .anatomy import _did_you_mean
    from .fit import SUBJECT_NAMES, SUBJECT_UNITS

    names, values = [], {}
    for it in items:
        name, eq, val = it.partition("=")
        name = name.strip()
        if name not in SUBJECT_NAMES:
            hint = _did_you_mean(name, SUBJECT_NAMES)
            raise UserError(f"--fix {it}: unknown subject parameter {name!r}{hint}; choose from {', '.join(SUBJECT_NAMES)}")
        if eq:
            try:
                v = float(val)
            except ValueError:
                unit = SUBJECT_UNITS[SUBJECT_NAMES.index(name)]
                raise UserError(f"--fix {it}: {val!r} is not a number ({name} in {unit})") from None
            if not math.isfinite(v):
                raise UserError(f"--fix {it}: the value must be finite")
            values[name] = v
        names.append(name)
    return tuple(dict.fromkeys(names)), values


def cmd_fit(a) -> int:
    from . import api, figures, io

    out, rep = Path(a.out), Path(a.report) if a.report else None
    figdir = Path(a.figures) if a.figures else None
    fig_path = figdir / "fit_muaps.png" if figdir else None
    _check_outputs([p for p in (out, rep, fig_path) if p is not None], a.force, inputs=[a.recording])
    rec = _apply_geometry(io.load_recording(a.recording, fs=a.fs), a)
    fix, values = _parse_fix(a.fix or [])
    f = api.fit(rec, anatomy=a.anatomy, progress=not a.quiet, seed=a.seed or 0, source=str(a.recording),
                fix=fix, fixed_values=values, **({"max_units": a.max_units} if a.max_units else {}))
    f.save_toml(out, force=a.force)
    print(f"wrote {out}: {len(f.unit_index)} units, explained variance {f.overall_ev:.3f}, "
          f"fit {f.timing['fit']:.1f} s (total {f.timing['total']:.1f} s)")
    for k, (v, sd) in f.subject.items():
        print(f"  {k:14s} {v:9.3f} +/- {sd:.3f}")
    if rep is not None:
        f.save_report(rep, force=a.force)
        print(f"wrote {rep}")
    if fig_path is not None:
        figdir.mkdir(parents=True, exist_ok=True)
        figures.fit_muaps(f, rec, path=fig_path)
        print(f"wrote {fig_path}")
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
    methods = ["bmiss"] if a.bmiss_only else [m for m in ("oracle", "cbss", "bmiss") if m in a.methods]
    names = ["recording.npz", "simulation.png", "demo_summary.json"]
    names += [f"{k}_{m}.{e}" for m in methods for k, e in (("decomposition", "npz"), ("report", "json"))]
    if "bmiss" in methods:
        names += ["bmiss_vs_truth.png", "bmiss_units.csv"]
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; demo writes its files into a folder")
    # demo rewrites its own folder (one holding a demo_summary.json); elsewhere it overwrites nothing
    # without --force
    ours = a.force or (out / "demo_summary.json").is_file()
    _check_outputs([out / n for n in names], ours)
    an = _load_anatomy(a.anatomy)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    snr = "noise-free" if a.snr is None else f"SNR {a.snr:g} dB"
    print(f"[1/4] simulating {a.anatomy}: {a.duration} s, {a.n_units} MUs, {snr} (seed {a.seed})")
    rec = api.simulate(an, duration_s=a.duration, snr_db=a.snr, seed=a.seed, n_units=a.n_units)
    io.save_recording(out / "recording.npz", rec)
    figures.simulation_overview(rec, path=out / "simulation.png")
    results = {}
    oracle_found = None
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
        _write_json(out / f"report_{m}.json", rep)
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
    config = {k: v for k, v in vars(a).items() if k != "func"}
    _write_json(out / "demo_summary.json", metrics._jsonable({"config": config, "results": results}))
    print(f"[4/4] figures and files in {out}/ (simulation.png, bmiss_vs_truth.png, bmiss_units.csv, report_*.json)"
          f"; total {time.perf_counter() - t0:.0f} s")
    return 0


_DURATION = _float_in(0, 3600, lo_open=True, unit="s")
_SNR = _float_in(-20, 120, unit="dB", inf_ok=True)
_SEED = _int_in(0, SEED_MAX)
_N_UNITS = _int_in(1, 2000)


def _write_json(path: Path, obj) -> None:
    from . import io

    text = json.dumps(obj, indent=1, default=str)
    io.atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# Commands that live in their own module: each defines ``register(sub)``, which adds its
# subparser(s) with ``set_defaults(func=...)``; a module must import nothing heavy at import time
# (``bmiss --help`` stays fast), so handlers import their work inside the function.
COMMAND_MODULES = ("bmiss.batch.cli",)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    p = _Parser(prog="bmiss", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("simulate", help="simulate an HD-EMG recording with ground truth")
    s.add_argument("--anatomy", default="biceps_brachii", help="shipped anatomy name or TOML path")
    s.add_argument("--duration", type=_DURATION, default=20.0, help="seconds, (0, 3600]")
    s.add_argument("--snr", type=_SNR, default=20.0, help="dB in [-20, 120], or 'inf' for noise-free")
    s.add_argument("--seed", type=_SEED, default=0, help=f"0..{SEED_MAX}")
    s.add_argument("--excitation", default=None,
                   help="constant:L | trapezoid:L[:ramp=S] | sinusoid:MEAN:AMP:HZ | file:PATH.npy "
                        "(default trapezoid:0.3 with 2-s ramps)")
    s.add_argument("--n-units", type=_N_UNITS, default=None, help="override the anatomy's pool size (1..2000)")
    s.add_argument("--muap-mode", choices=("fibres", "expected"), default="fibres")
    s.add_argument("--powerline-uv", type=_float_in(0, 1e4, unit="µV"), default=0.0,
                   help="50 Hz interference amplitude, µV, [0, 10000]")
    s.add_argument("--figures", action="store_true", help="also save an overview PNG next to --out")
    s.add_argument("--out", required=True, help="recording .npz to write")
    s.add_argument("--force", action="store_true", help="overwrite an existing output")
    _geometry_args(s, "simulate through this ")
    s.set_defaults(func=cmd_simulate)

    d = sub.add_parser("decompose", help="decompose a recording into MU spike trains")
    d.add_argument("recording", help=".npz recording (or .otb+, .mat, openhdemg .json)")
    d.add_argument("--method", choices=("bmiss", "cbss", "oracle"), default="bmiss")
    d.add_argument("--out", help="decomposition .npz (default: RECORDING_METHOD.npz)")
    d.add_argument("--anatomy", default=None, help="bmiss: anatomy for the forward model (default: the recording's or biceps_brachii)")
    d.add_argument("--grid", default=None, metavar="ROWSxCOLS",
                   help="the recording's grid when its channels run row by row (with --ied, --missing)")
    d.add_argument("--ied", type=_float_in(0, 100, lo_open=True, unit="mm"), default=None,
                   help="inter-electrode distance, mm, (0, 100]")
    _geometry_args(d, "the recording's ")
    d.add_argument("--fs", type=_float_in(0, 1e6, lo_open=True, unit="Hz"), default=None,
                   help="sampling rate, Hz, for files that do not store one (e.g. a bare .mat matrix)")
    d.add_argument("--forward", choices=("conductor", "surrogate"), default="conductor", help="bmiss forward model")
    d.add_argument("--n-iter", type=_int_in(1, 10000), default=None, help="cbss: outer iterations; bmiss: rounds (1..10000)")
    d.add_argument("--extension-factor", type=_int_in(1, 256), default=None, metavar="R",
                   help="delayed copies per channel before whitening (1..256; default: about 1000 / n_channels)")
    d.add_argument("--deconvolve", action=argparse.BooleanOptionalAction, default=None,
                   help="re-estimate the discharges by sparse deconvolution of the EMG with the units' MUAPs "
                        "(default: off; the decomposition's meta records which was used)")
    d.add_argument("--init", choices=("blind", "model"), default="blind",
                   help="bmiss: 'blind' (default) = blind units, subject fit, then the model search for the missed "
                        "units; 'model' = the model search alone within the anatomy as given")
    d.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                   help="any field of the method's settings (bmiss.pipeline.settings: Rules, FastICASettings, "
                        "ModelSettings, OracleSettings), e.g. --setting sil_threshold=0.85 --setting n_starts=24")
    d.add_argument("--seed", type=_SEED, default=None, help=f"0..{SEED_MAX}")
    d.add_argument("--quiet", action="store_true")
    d.add_argument("--force", action="store_true")
    d.set_defaults(func=cmd_decompose)

    e = sub.add_parser("evaluate", help="score a decomposition against simulation ground truth")
    e.add_argument("decomposition")
    e.add_argument("--truth", required=True, help="the simulated recording .npz")
    e.add_argument("--oracle", action="store_true", help="also report yield as a fraction of the oracle-identifiable MUs")
    e.add_argument("--json", default=None, help="write the full report here")
    e.add_argument("--force", action="store_true", help="overwrite an existing --json")
    e.set_defaults(func=cmd_evaluate)

    x = sub.add_parser("export", help="export a decomposition (openhdemg JSON, CSV, events TSV, JSON)")
    x.add_argument("decomposition")
    x.add_argument("--out", required=True)
    x.add_argument("--format", choices=("openhdemg", "csv", "tsv", "json", "mu-csv", "mu-json", "drive-csv", "drive-json"),
                   default=None, help="mu-*: motor-neuron properties (thresholds, rates, pool fit); drive-*: neural "
                                      "drive (smoothed rates, cumulative spike train); both use --recording's "
                                      "reference/force signal when given")
    x.add_argument("--recording", default=None, help="needed for openhdemg (RAW_SIGNAL)")
    x.add_argument("--force", action="store_true")
    x.set_defaults(func=cmd_export)

    f = sub.add_parser("figures", help="MUAP map, raster, EMG stretch (and estimate vs truth)")
    f.add_argument("recording")
    f.add_argument("--decomposition", default=None)
    f.add_argument("--units", type=_int_in(0, 100000), nargs="*", default=None, help="MUs for the MUAP map")
    f.add_argument("--out", default="figures", help="folder for the PNGs")
    f.add_argument("--force", action="store_true", help="overwrite existing PNGs")
    _geometry_args(f, "the recording's ")
    f.add_argument("--fs", type=_float_in(0, 1e6, lo_open=True, unit="Hz"), default=None,
                   help="sampling rate, Hz, for files that do not store one")
    f.set_defaults(func=cmd_figures)

    ft = sub.add_parser("fit", help="fit the subject's forward model (tissue, fibres, grid placement) to a recording")
    ft.add_argument("recording", help=".npz recording (or .otb+, .mat, openhdemg .json)")
    ft.add_argument("--anatomy", default=None, help="base anatomy (default: the recording's or biceps_brachii)")
    _geometry_args(ft, "the recording's ")
    ft.add_argument("--fs", type=_float_in(0, 1e6, lo_open=True, unit="Hz"), default=None,
                    help="sampling rate, Hz, for files that do not store one")
    ft.add_argument("--out", required=True, help="subject anatomy .toml to write (loadable with --anatomy)")
    ft.add_argument("--report", default=None, help="JSON report (explained variance, parameters with std, timing)")
    ft.add_argument("--figures", default=None, metavar="DIR", help="folder for the observed-vs-fitted MUAP figure")
    ft.add_argument("--max-units", type=_int_in(2, 200), default=None, help="fit at most this many units (default 30)")
    ft.add_argument("--fix", action="append", metavar="NAME[=VALUE]",
                    help="hold a subject parameter at the base anatomy's value or at VALUE, e.g. --fix fat_mm=3.2 "
                         "(fat measured by ultrasound) or --fix anisotropy; repeatable")
    ft.add_argument("--seed", type=_SEED, default=None, help=f"0..{SEED_MAX}")
    ft.add_argument("--quiet", action="store_true")
    ft.add_argument("--force", action="store_true")
    ft.set_defaults(func=cmd_fit)

    an = sub.add_parser("anatomies", help="list shipped anatomies")
    an.set_defaults(func=cmd_anatomies)

    m = sub.add_parser("demo", help="simulate -> decompose -> evaluate -> figures on the default anatomy")
    m.add_argument("--anatomy", default="biceps_brachii")
    m.add_argument("--duration", type=_DURATION, default=10.0, help="seconds, (0, 3600]")
    m.add_argument("--snr", type=_SNR, default=20.0, help="dB in [-20, 120], or 'inf' for noise-free")
    m.add_argument("--n-units", type=_N_UNITS, default=60, help="MU pool size (1..2000)")
    m.add_argument("--seed", type=_SEED, default=0, help=f"0..{SEED_MAX}")
    m.add_argument("--methods", nargs="+", choices=("oracle", "cbss", "bmiss"), default=["oracle", "cbss", "bmiss"],
                   help="decomposers to run and compare (default all three)")
    m.add_argument("--bmiss-only", action="store_true", help="same as --methods bmiss")
    m.add_argument("--out", default="demo_out", help="folder (a demo's own folder is rewritten)")
    m.add_argument("--force", action="store_true", help="also overwrite demo-named files in a folder that is not a demo's")
    m.set_defaults(func=cmd_demo)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:  # raised by the OS: "[Errno 2] ..." otherwise
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__


def _is_user_error(e: BaseException) -> bool:
    return isinstance(e, USER_ERRORS)


def _sigterm(signum, frame):  # kill PID: unwind like Ctrl-C, so temporary files are removed
    raise KeyboardInterrupt


def main(argv=None) -> int:
    """Run one command. Exit status: 0 done, 2 user error (one line), 130 interrupted, 1 internal error."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a bad option (2, message already printed)
        return e.code if isinstance(e.code, int) else 2
    prev = None
    if threading.current_thread() is threading.main_thread():
        prev = signal.signal(signal.SIGTERM, _sigterm)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"bmiss {args.cmd}: interrupted; no output was left half-written", file=sys.stderr)
        if argv is None:  # the console command: JAX/XLA threads stopped mid-computation can segfault
            sys.stdout.flush()  # during interpreter shutdown, so leave at once (temporaries are gone)
            sys.stderr.flush()
            os._exit(130)
        return 130
    except Exception as e:  # noqa: BLE001 - user errors in one line; bugs keep their traceback
        if _is_user_error(e):
            print(f"bmiss {args.cmd}: error: {_one_line(e)}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f"bmiss {args.cmd}: internal error ({type(e).__name__}): this is a bug in bmiss, not in your input; "
              "please report it with the command line and the traceback above", file=sys.stderr)
        return 1
    finally:
        if prev is not None:
            signal.signal(signal.SIGTERM, prev)


if __name__ == "__main__":
    sys.exit(main())
