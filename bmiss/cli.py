"""Command line: ``bmiss simulate | decompose | evaluate | export | figures | fit | anatomies | demo``."""
from __future__ import annotations

import os
import sys

from . import interrupts, jaxcache


def _console_process() -> bool:
    """This process is the ``bmiss`` command (console script or ``python -m bmiss``)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name in ("bmiss", "bmiss.exe") or sys.argv[0].endswith(os.path.join("bmiss", "__main__.py"))


if _console_process():  # Ctrl-C from here on gives one line and exit 130 (JAX is imported much later)
    interrupts.install(console=True)
    jaxcache.enable_for_command()  # compiled kernels kept between runs (BMISS_JAX_CACHE=off: not)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from .errors import BmissError, UserError  # noqa: E402
from .outputs import (DECOMPOSITION_SUFFIXES, RECORDING_SUFFIXES, check_outputs as _check_outputs,  # noqa: E402,F401
                      check_suffix, same_file as _same_file)

# Errors caused by what the user asked for or gave: one line, exit 2. Anything else is a bug in
# bmiss: traceback, a hint to report it, exit 1 (a blanket ValueError catch would hide bugs).
USER_ERRORS = (BmissError, FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
               PermissionError)
SEED_MAX = 2 ** 32 - 1


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``bmiss CMD: error: ...``) instead of the usage block; a
    negative number in any notation (``--snr -1e1``) is a value, not an option."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-inf$", re.I)

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
        p.add_argument("--ied", type=_IED, default=None,
                       help=f"inter-electrode distance, mm, [{IED_MIN_MM:g}, {IED_MAX_MM:g}]")
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
    out = check_suffix(a.out, RECORDING_SUFFIXES, what="recording", example="rec.npz")
    fig_path = out.with_suffix(".png") if a.figures else None
    _check_outputs([out] + ([fig_path] if fig_path else []), a.force)
    an = _load_anatomy(a.anatomy)
    from . import api, io

    geo = _geometry_kw(a)
    layout = None
    if geo:  # simulate through the requested layout; a named grid keeps its own spacing (as in the API)
        from . import electrodes

        ied = geo.get("ied_mm")
        if "grid" in geo and ied is None:  # a plain grid without --ied takes the anatomy's spacing
            ied = an.grid.ied_mm
        layout = electrodes.resolve_layout(electrode=geo.get("electrode"), orientation=geo.get("orientation"),
                                           grid=geo.get("grid"), ied=ied, missing=geo.get("missing"))
    _check_excitation(a.excitation, a.duration, an.grid.fs_hz)
    rec = api.simulate(an, duration_s=a.duration, snr_db=a.snr, seed=a.seed, excitation=a.excitation,
                       n_units=a.n_units, muap_mode=a.muap_mode, powerline_uv=a.powerline_uv, electrode=layout)
    io.save_recording(out, rec, force=a.force)
    active = sum(len(s) > 0 for s in rec.true_spikes)
    snr = "noise-free" if a.snr is None else f"SNR {a.snr:g} dB"
    grid = f"{rec.electrode or 'grid'} @ {rec.ied_mm:g} mm" if rec.ied_mm is not None else "grid"
    print(f"wrote {out}: {rec.n_channels} channels ({grid}) x {rec.n_samples} samples at {rec.fs:g} Hz, "
          f"{len(rec.true_spikes)} MUs ({active} active), {snr}, {rec.meta['simulate_time_s']} s")
    if fig_path:
        from . import figures

        figures.simulation_overview(rec, path=fig_path)
        print(f"wrote {fig_path}")
    return 0


def _load_anatomy(spec):
    if spec is None or not str(spec).strip():
        from . import anatomy

        raise UserError(f"--anatomy is empty: give a shipped anatomy ({', '.join(anatomy.list_anatomies())}) "
                        "or the path of an anatomy .toml")
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


def _reader_kw(a) -> dict:
    """Reader options given on the command line (``--fs``, ``--units``)."""
    kw = {}
    if getattr(a, "fs", None) is not None:
        kw["fs"] = a.fs
    if getattr(a, "emg_unit", None) is not None:
        if not str(a.recording).lower().endswith(".mat"):
            raise UserError(f"--emg-unit applies to .mat files (whose channel labels may lack a unit); "
                            f"{a.recording} stores its unit")
        kw["units"] = a.emg_unit
    return kw


def _default_decomposition_name(recording: str, method: str) -> Path:
    r = Path(recording)
    stem = r.name[:-len(".json.gz")] if r.name.lower().endswith(".json.gz") else r.stem
    return r.with_name(f"{stem}_{method}.npz")


def cmd_decompose(a) -> int:
    _parse_grid(a.grid)  # a bad --grid fails before any work
    if a.n_iter is not None and a.method == "oracle":
        raise UserError("--n-iter applies to --method cbss (FastICA iterations) and bmiss (search rounds); "
                        "the oracle has none")
    out = (check_suffix(a.out, DECOMPOSITION_SUFFIXES, what="decomposition", example="dec.npz") if a.out is not None
           else _default_decomposition_name(a.recording, a.method))
    _check_outputs([out], a.force, inputs=[a.recording])
    settings = _parse_settings(a.setting, a.method)  # refused before any work
    from . import api, io

    rec = io.load_recording(a.recording, **_reader_kw(a))
    interrupts.check()
    if a.method == "oracle" and rec.true_muaps is None:
        raise UserError(f"--method oracle needs the true MUAPs of a simulated recording; {a.recording} has none "
                        "(use --method cbss or bmiss)")
    kw = _geometry_kw(a)  # every method records the layout; bmiss needs one (file or flags)
    kw.update(method_kw(a.method, a.seed, a.n_iter))
    if a.extension_factor is not None:
        kw["R"] = a.extension_factor
    kw.update(settings)
    if a.deconvolve is not None:
        kw["deconvolve"] = a.deconvolve
    if a.method == "bmiss":
        kw.update(anatomy=a.anatomy, init=a.init)
        if a.forward is not None:
            kw["forward"] = a.forward
    elif a.anatomy is not None or a.forward is not None:
        print("note: --anatomy/--forward apply to --method bmiss only; ignored", file=sys.stderr)
    t = time.perf_counter()
    dec = api.decompose(rec, a.method, progress=not a.quiet, **kw)
    interrupts.check()  # stage boundary: an interrupt caught anywhere during the work stops here
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


def method_kw(method: str, seed=None, n_iter=None) -> dict:
    """The method's keywords for ``--seed`` and ``--n-iter`` (FastICA iterations for cbss, search
    rounds for bmiss), shared by ``decompose`` and ``batch``."""
    kw = {} if seed is None else {"seed": seed}
    if n_iter is not None:
        kw["n_iter" if method == "cbss" else "n_rounds"] = n_iter
    return kw


def _parse_settings(items, method: str) -> dict:
    """``--setting KEY=VALUE`` (repeatable) -> typed keywords for the method's settings
    (:func:`bmiss.pipeline.settings.parse_settings`: each value parsed and checked by its field's type)."""
    if not items:
        return {}
    from .pipeline.settings import parse_settings

    return parse_settings(method, items)


def _free_name(path: Path) -> Path:
    for k in range(1, 1000):
        alt = path.with_name(f"{path.stem}.{k}{path.suffix}")
        if not alt.exists():
            return alt
    raise FileExistsError(f"no free name next to {path}")


def cmd_evaluate(a) -> int:
    from . import api, io, metrics

    if (a.truth is None) == (a.reference is None):
        raise UserError("evaluate needs one of --truth REC.npz (a simulation's ground truth) or --reference FILE "
                        "(another tool's decomposition of the same recording)")
    if a.reference is not None and a.oracle:
        raise UserError("--oracle needs --truth (a simulation): a reference decomposition has no true MUAPs")
    if a.json:
        _check_outputs([a.json], a.force, inputs=[a.decomposition, a.truth or a.reference])
    if a.reference is not None:
        from . import reference

        rep = reference.compare(a.decomposition, a.reference)
        print(reference.format_comparison(rep))
    else:
        rep = api.evaluate(a.decomposition, a.truth, oracle=a.oracle)
        print(metrics.format_report(rep))
    if a.json:
        text = json.dumps(rep, indent=1)
        io.atomic_write(a.json, lambda tmp: Path(tmp).write_text(text), force=a.force)
        print(f"wrote {a.json}")
    return 0


def cmd_export(a) -> int:
    _check_outputs([a.out], a.force, inputs=[a.decomposition, a.recording])
    from . import api

    fmt = api.export_format(a.out, a.format)
    p = api.export(a.decomposition, a.out, fmt, rec=a.recording, force=a.force)
    print(f"wrote {p}: {api.EXPORT_DESCRIPTIONS[fmt]}")
    return 0


def cmd_figures(a) -> int:
    from . import api, figures, io

    # every input is read and checked before the first PNG is written
    rec = _apply_geometry(io.load_recording(a.recording, **_reader_kw(a)), a)
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
    """``--fix NAME`` / ``--fix NAME=VALUE`` -> (names, values) for :func:`bmiss.fit`."""
    from .errors import did_you_mean
    from .fitting.bounds import SUBJECT_NAMES, SUBJECT_UNITS

    names, values = [], {}
    for it in items:
        name, eq, val = it.partition("=")
        name = name.strip()
        if name not in SUBJECT_NAMES:
            hint = did_you_mean(name, SUBJECT_NAMES, cutoff=0.5)
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
    out = check_suffix(a.out, (".toml",), what="subject anatomy", example="subject.toml")  # read by --anatomy
    rep = Path(a.report) if a.report else None
    figdir = Path(a.figures) if a.figures else None
    fig_path = figdir / "fit_muaps.png" if figdir else None
    _check_outputs([p for p in (out, rep, fig_path) if p is not None], a.force, inputs=[a.recording])
    fix, values = _parse_fix(a.fix or [])
    from . import api, figures, io

    rec = _apply_geometry(io.load_recording(a.recording, **_reader_kw(a)), a)
    sel = {k: getattr(a, k) for k in ("max_units", "min_sil", "max_cov", "min_discharges")
           if getattr(a, k) is not None}
    f = api.fit(rec, anatomy=a.anatomy, progress=not a.quiet, seed=a.seed or 0, source=str(a.recording),
                fix=fix, fixed_values=values, **sel)
    interrupts.check()
    f.save_toml(out, force=a.force)
    print(f"wrote {out}: {len(f.unit_index)} units, explained variance {f.overall_ev:.3f}, "
          f"fit {f.timing['fit']:.1f} s (total {f.timing['total']:.1f} s)")
    print(f"  MUAP model: {f.settings.get('forward_model')}")
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
        print("bmiss MU property errors on matched units (normalised RMSE by the anatomy bounds; share of "
              "true values inside the reported 68 % / 95 % intervals):")
        for k, v in results["bmiss"]["property_errors"].items():
            if isinstance(v, dict) and "nrmse" in v:
                cov = (f"  in 68 % / 95 %: {v['cover68']:.0%} / {v['cover95']:.0%} of {v['n_interval']}"
                       if v.get("n_interval") else "")
                print(f"  {k:12s} MAE {v.get('mae', float('nan')):.3g}  nRMSE {v['nrmse']:.3g}{cov}")
    config = {k: v for k, v in vars(a).items() if k != "func"}
    _write_json(out / "demo_summary.json", metrics._jsonable({"config": config, "results": results}))
    written = [n for n in names if (out / n).is_file()]
    print(f"[4/4] figures and files in {out}/ ({', '.join(written)}); total {time.perf_counter() - t0:.0f} s")
    return 0


def _units_arg(p) -> None:
    p.add_argument("--emg-unit", choices=("uV", "mV", "V"), default=None,
                   help=".mat files whose channel labels carry no unit: the EMG's unit (default: mV, "
                        "OTBioLab+'s export unit, with a warning)")


def _ANATOMY(s: str) -> str:
    """argparse type: a non-empty anatomy name or path (an empty one used to be taken for the current folder)."""
    if not s.strip():
        raise argparse.ArgumentTypeError("is empty: give a shipped anatomy name (bmiss anatomies) or the path "
                                         "of an anatomy .toml")
    return s


MIN_DURATION_S = 0.1  # = bmiss.simulate.MIN_DURATION_S (a test checks); the grid may need more
IED_MIN_MM, IED_MAX_MM = 0.5, 100.0  # = the layout check in bmiss.electrodes (a test checks)
_IED = _float_in(IED_MIN_MM, IED_MAX_MM, unit="mm")
_DURATION = _float_in(MIN_DURATION_S, 3600, unit="s")
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
COMMAND_MODULES = ("bmiss.review.cli", "bmiss.needle.cli", "bmiss.batch.cli")


def _add_simulate(sub) -> None:
    s = sub.add_parser("simulate", help="simulate an HD-EMG recording with ground truth")
    s.add_argument("--anatomy", type=_ANATOMY, default="biceps_brachii", help="shipped anatomy name or TOML path")
    s.add_argument("--duration", type=_DURATION, default=20.0,
                   help=f"seconds, [{MIN_DURATION_S:g}, 3600] (and more samples than channels)")
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
    s.add_argument("--out", required=True, help="recording to write: .npz (or openhdemg .json/.json.gz)")
    s.add_argument("--force", action="store_true", help="overwrite an existing output")
    _geometry_args(s, "simulate through this ")
    s.set_defaults(func=cmd_simulate)


def _add_decompose(sub) -> None:
    d = sub.add_parser("decompose", help="decompose a recording into MU spike trains")
    d.add_argument("recording", help=".npz recording (or .otb+, .mat, openhdemg .json)")
    d.add_argument("--method", choices=("bmiss", "cbss", "oracle"), default="bmiss")
    d.add_argument("--out", help="decomposition to write, a .npz file (default: RECORDING_METHOD.npz)")
    d.add_argument("--anatomy", type=_ANATOMY, default=None, help="bmiss: anatomy for the forward model (default: the recording's or biceps_brachii)")
    d.add_argument("--grid", default=None, metavar="ROWSxCOLS",
                   help="the recording's grid when its channels run row by row (with --ied, --missing)")
    d.add_argument("--ied", type=_IED, default=None,
                   help=f"inter-electrode distance, mm, [{IED_MIN_MM:g}, {IED_MAX_MM:g}]")
    _geometry_args(d, "the recording's ")
    d.add_argument("--fs", type=_float_in(0, 1e6, lo_open=True, unit="Hz"), default=None,
                   help="sampling rate, Hz, for files that do not store one (e.g. a bare .mat matrix)")
    _units_arg(d)
    d.add_argument("--forward", choices=("conductor", "surrogate"), default=None,
                   help="bmiss: the model search's MUAP model (default surrogate: the trained network; conductor: "
                        "the analytic model it was trained on)")
    d.add_argument("--n-iter", type=_int_in(1, 10000), default=None, help="cbss: outer iterations; bmiss: rounds (1..10000)")
    d.add_argument("--extension-factor", type=_int_in(1, 256), default=None, metavar="R",
                   help="delayed copies per channel before whitening (1..256; default: about 1000 / n_channels)")
    d.add_argument("--deconvolve", action=argparse.BooleanOptionalAction, default=None,
                   help="re-estimate the discharges by sparse deconvolution of the EMG with the units' MUAPs "
                        "(default: on for --method bmiss, off for cbss and oracle; the decomposition's "
                        "meta['settings'] records which was used)")
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


def _add_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="score a decomposition against simulation ground truth or a reference "
                                        "decomposition")
    e.add_argument("decomposition")
    e.add_argument("--truth", default=None, help="the simulated recording .npz")
    e.add_argument("--reference", default=None, metavar="FILE",
                   help="another tool's decomposition of the same recording: OTBioLab+ .mat export, DEMUSE .mat, "
                        "MUedit .mat, openhdemg .json, EMG-BIDS _events.tsv, bmiss .npz; reports one-to-one "
                        "matching and RoA per pair")
    e.add_argument("--oracle", action="store_true", help="also report yield as a fraction of the oracle-identifiable MUs")
    e.add_argument("--json", default=None, help="write the full report here")
    e.add_argument("--force", action="store_true", help="overwrite an existing --json")
    e.set_defaults(func=cmd_evaluate)


def _add_export(sub) -> None:
    x = sub.add_parser("export", help="export a decomposition (openhdemg JSON, MUedit .mat, CSV, events TSV, JSON)")
    x.add_argument("decomposition")
    x.add_argument("--out", required=True, help="file to write; without --format the suffix chooses: .csv per-MU "
                                                "summary, .json per-MU JSON, .tsv events, .json.gz openhdemg, "
                                                ".mat MUedit")
    x.add_argument("--format", choices=("openhdemg", "muedit", "csv", "tsv", "json", "mu-csv", "mu-json", "drive-csv", "drive-json"),
                   default=None, help="mu-*: motor-neuron properties (thresholds, rates, pool fit); drive-*: neural "
                                      "drive (smoothed rates, cumulative spike train); both use --recording's "
                                      "reference/force signal when given")
    x.add_argument("--recording", default=None, help="needed for openhdemg and muedit (the files hold the EMG)")
    x.add_argument("--force", action="store_true")
    x.set_defaults(func=cmd_export)


def _add_figures(sub) -> None:
    f = sub.add_parser("figures", help="MUAP map, raster, EMG stretch (and estimate vs truth)")
    f.add_argument("recording")
    f.add_argument("--decomposition", default=None)
    f.add_argument("--units", type=_int_in(0, 100000), nargs="*", default=None, help="MUs for the MUAP map")
    f.add_argument("--out", default="figures", help="folder for the PNGs")
    f.add_argument("--force", action="store_true", help="overwrite existing PNGs")
    _geometry_args(f, "the recording's ")
    f.add_argument("--fs", type=_float_in(0, 1e6, lo_open=True, unit="Hz"), default=None,
                   help="sampling rate, Hz, for files that do not store one")
    _units_arg(f)
    f.set_defaults(func=cmd_figures)


def _add_fit(sub) -> None:
    ft = sub.add_parser("fit", help="fit the subject's forward model (tissue, fibres, grid placement) to a recording")
    ft.add_argument("recording", help=".npz recording (or .otb+, .mat, openhdemg .json)")
    ft.add_argument("--anatomy", type=_ANATOMY, default=None, help="base anatomy (default: the recording's or biceps_brachii)")
    _geometry_args(ft, "the recording's ")
    ft.add_argument("--fs", type=_float_in(0, 1e6, lo_open=True, unit="Hz"), default=None,
                    help="sampling rate, Hz, for files that do not store one")
    _units_arg(ft)
    ft.add_argument("--out", required=True, help="subject anatomy .toml to write (loadable with --anatomy)")
    ft.add_argument("--report", default=None, help="JSON report (explained variance, parameters with std, timing)")
    ft.add_argument("--figures", default=None, metavar="DIR", help="folder for the observed-vs-fitted MUAP figure")
    ft.add_argument("--max-units", type=_int_in(2, 200), default=None, help="fit at most this many units (default 30)")
    ft.add_argument("--min-sil", type=_float_in(0, 1), default=None,
                    help="use blind units with SIL >= this, [0, 1] (default 0.85)")
    ft.add_argument("--max-cov", type=_float_in(0, 10, lo_open=True), default=None,
                    help="use blind units with CoV of ISI <= this, (0, 10] (default 0.4)")
    ft.add_argument("--min-discharges", type=_int_in(2, 100000), default=None,
                    help="use blind units with at least this many discharges, 2..100000 (default 30)")
    ft.add_argument("--fix", action="append", metavar="NAME[=VALUE]",
                    help="hold a subject parameter at the base anatomy's value or at VALUE, e.g. --fix fat_mm=3.2 "
                         "(fat measured by ultrasound) or --fix anisotropy; repeatable")
    ft.add_argument("--seed", type=_SEED, default=None, help=f"0..{SEED_MAX}")
    ft.add_argument("--quiet", action="store_true")
    ft.add_argument("--force", action="store_true")
    ft.set_defaults(func=cmd_fit)


def _add_anatomies(sub) -> None:
    an = sub.add_parser("anatomies", help="list shipped anatomies")
    an.set_defaults(func=cmd_anatomies)


def _add_demo(sub) -> None:
    m = sub.add_parser("demo", help="simulate -> decompose -> evaluate -> figures on the default anatomy")
    m.add_argument("--anatomy", type=_ANATOMY, default="biceps_brachii", help="shipped anatomy name or TOML path")
    m.add_argument("--duration", type=_DURATION, default=10.0, help=f"seconds, [{MIN_DURATION_S:g}, 3600]")
    m.add_argument("--snr", type=_SNR, default=20.0, help="dB in [-20, 120], or 'inf' for noise-free")
    m.add_argument("--n-units", type=_N_UNITS, default=60, help="MU pool size (1..2000)")
    m.add_argument("--seed", type=_SEED, default=0, help=f"0..{SEED_MAX}")
    m.add_argument("--methods", nargs="+", choices=("oracle", "cbss", "bmiss"), default=["oracle", "cbss", "bmiss"],
                   help="decomposers to run and compare (default all three)")
    m.add_argument("--bmiss-only", action="store_true", help="same as --methods bmiss")
    m.add_argument("--out", default="demo_out", help="folder (a demo's own folder is rewritten)")
    m.add_argument("--force", action="store_true", help="also overwrite demo-named files in a folder that is not a demo's")
    m.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command: the built-in ones (one ``_add_CMD`` each), then COMMAND_MODULES'."""
    import importlib

    p = _Parser(prog="bmiss", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (_add_simulate, _add_decompose, _add_evaluate, _add_export, _add_figures, _add_fit, _add_anatomies, _add_demo):
        add(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    p._bmiss_subparsers = dict(sub.choices)
    return p


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:  # raised by the OS: "[Errno 2] ..." otherwise
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__


def _is_user_error(e: BaseException) -> bool:
    return isinstance(e, USER_ERRORS)


def _interrupted(cmd: str, console: bool) -> int:
    interrupts.acknowledge()
    print(interrupts.line(), file=sys.stderr)
    if console:  # JAX/XLA threads stopped mid-computation can segfault during interpreter shutdown,
        sys.stdout.flush()  # so leave at once (outputs are atomic: nothing is half-written)
        sys.stderr.flush()
        os._exit(interrupts.EXIT_STATUS)
    return interrupts.EXIT_STATUS


def _parse(argv):
    """Parsed arguments; unknown options are reported by the subcommand's parser (``bmiss CMD: error:``)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = parser._bmiss_subparsers.get(args.cmd, parser)
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv=None) -> int:
    """Run one command. Exit status: 0 done, 2 user error (one line), 130 interrupted (Ctrl-C or
    SIGTERM, one line; nothing is written after the interrupt), 1 internal error (traceback)."""
    console = argv is None
    own = threading.current_thread() is threading.main_thread()
    if own and not (console and interrupts.installed()):
        interrupts.install(console=console)
    cmd = "bmiss"
    interrupts.set_line("bmiss: interrupted; nothing was written")
    try:
        interrupts.enter_main()
        try:
            args = _parse(argv)
        except SystemExit as e:  # argparse: --help (0) or a bad option (2, message already printed)
            return e.code if isinstance(e.code, int) else 2
        cmd = f"bmiss {args.cmd}"
        interrupts.set_line(f"{cmd}: interrupted; no output was left half-written, none written after the interrupt")
        interrupts.check()
        rc = args.func(args)
        interrupts.check()  # an interrupt that a callback swallowed still ends in 130
        return rc
    except KeyboardInterrupt:
        return _interrupted(cmd, console)
    except Exception as e:  # noqa: BLE001 - user errors in one line; bugs keep their traceback
        if interrupts.requested():  # whatever the interrupt broke on its way is not the user's error
            return _interrupted(cmd, console)
        if _is_user_error(e):
            print(f"{cmd}: error: {_one_line(e)}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f"{cmd}: internal error ({type(e).__name__}): this is a bug in bmiss, not in your input; "
              "please report it with the command line and the traceback above", file=sys.stderr)
        return 1
    finally:
        if own and not console:
            interrupts.uninstall()


if __name__ == "__main__":
    sys.exit(main())
