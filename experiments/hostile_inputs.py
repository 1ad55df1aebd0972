"""The hostile-input trial of issue 17, kept runnable: every case the issue lists that this tree
can reproduce, each with the behaviour it must show, a verdict (ok / bad) and a table by verdict.

    python experiments/hostile_inputs.py [--fast] [--only ID ...] [--out results/hostile_inputs.json]

Cases run in process through ``bmiss.cli.main`` (command lines) or the ``bmiss`` API, on tiny
files written into a temporary folder; the interrupt cases run the ``bmiss`` command in
subprocesses and signal them. A case passes ("ok") when it gives the documented behaviour: for a
refused input exactly one ``bmiss CMD: error: ...`` line, exit 2, and no file written or changed;
for an API call a :class:`bmiss.errors.BmissError` naming the argument; for an interrupt exit
130, one line, and the old output intact. Cases owned by other work (the settings parser, the
file readers) are run too; a module ``experiments/hostile_readers.py`` defining
``cases(work) -> list[Case]`` adds more reader cases when it exists.

``tests/test_hostile.py`` runs the fast cases of this trial.
"""
from __future__ import annotations

import argparse
import contextlib
import io as _io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OWN = "reliability"
SETTINGS = "settings (lead)"
READERS = "readers (formats)"


@dataclass
class Case:
    id: str
    owner: str
    what: str  # the command line or call
    run: Callable[[Path], tuple[bool, str]]  # (ok, detail); work folder with the inputs
    fast: bool = True
    group: str = ""


# ------------------------------------------------------------------ inputs
FS = 2048.0


def make_inputs(work: Path) -> None:
    """rec.npz (16 channels x 2 s noise with a toy ground truth), dec.npz (its decomposition, fingerprinted)."""
    from bmiss import io as bio

    rng = np.random.default_rng(0)
    n = 4096
    spikes = [np.arange(100, n - 100, 200), np.arange(150, n - 100, 310)]
    rec = bio.Recording(emg=rng.normal(0, 5, (16, n)).astype(np.float32), fs=FS, grid_shape=(4, 4), ied_mm=8.0,
                        true_spikes=spikes, true_muaps=rng.normal(size=(2, 16, 16)).astype(np.float32),
                        meta={"kind": "toy"})
    bio.save_recording(work / "rec.npz", rec)
    dec = bio.Decomposition(spikes=[s + 1 for s in spikes], sources=np.zeros((2, n), np.float32), fs=FS,
                            method="toy", sil=np.array([0.95, 0.9]), pnr_db=np.array([30.0, 28.0]),
                            cov_isi=np.array([0.1, 0.12]))
    dec.meta["recording"] = bio.recording_fingerprint(rec)
    bio.save_decomposition(work / "dec.npz", dec)
    (work / "existing.npz").write_bytes((work / "dec.npz").read_bytes())


def _snapshot(work: Path) -> dict:
    return {p.relative_to(work).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(work.rglob("*"))}


def _cli(argv: list[str], work: Path):
    """Run ``bmiss.cli.main(argv)`` in ``work``: (rc, stdout, stderr)."""
    from bmiss.cli import main

    out, err = _io.StringIO(), _io.StringIO()
    cwd = os.getcwd()
    os.chdir(work)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    finally:
        os.chdir(cwd)
    return rc, out.getvalue(), err.getvalue()


def refused(argv: list[str], says: str = "", *, allow_new: tuple = (), forbid: str = "") -> Callable:
    """A command line that must give one ``bmiss CMD: error:`` line, exit 2, and leave every file as it was."""
    def run(work):
        before = _snapshot(work)
        rc, _, err = _cli(argv, work)
        after = {k: v for k, v in _snapshot(work).items() if k not in allow_new}
        lines = [ln for ln in err.splitlines() if ln.strip()]
        problems = []
        if rc != 2:
            problems.append(f"exit {rc}")
        if len(lines) != 1 or not lines[0].startswith(f"bmiss {argv[0]}: error: "):
            problems.append(f"stderr {len(lines)} lines: {lines[-1][:160] if lines else ''!r}")
        if says and says not in err:
            problems.append(f"message lacks {says!r}")
        if forbid and forbid in err:
            problems.append(f"message says {forbid!r}")
        if after != before:
            problems.append("files changed: " + ", ".join(sorted(set(after) ^ set(before)) or
                                                          [k for k in after if after[k] != before.get(k)]))
        msg = lines[-1][:160] if lines else ""
        return (not problems), ("; ".join(problems) + f" | {msg}") if problems else msg
    return run


def api_refused(call: Callable[[Path], object], says: str) -> Callable:
    """An API call that must raise a BmissError whose message contains ``says``, changing no file."""
    def run(work):
        from bmiss.errors import BmissError

        before = _snapshot(work)
        cwd = os.getcwd()
        os.chdir(work)
        try:
            call(work)
            res = (False, "no error raised")
        except BmissError as e:
            msg = " ".join(str(e).split())
            res = (says in msg, msg[:200] if says in msg else f"message lacks {says!r}: {msg[:160]}")
        except (FileExistsError, IsADirectoryError) as e:
            msg = " ".join(str(e).split())
            res = (says in msg, msg[:200])
        except Exception as e:  # noqa: BLE001
            res = (False, f"{type(e).__name__}: {' '.join(str(e).split())[:160]}")
        finally:
            os.chdir(cwd)
        if _snapshot(work) != before:
            res = (False, "files changed; " + res[1])
        return res
    return run


def _check(fn: Callable[[Path], tuple[bool, str]]) -> Callable:
    def run(work):
        try:
            return fn(work)
        except Exception as e:  # noqa: BLE001
            return False, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return run


# ------------------------------------------------------------------ interrupts (subprocesses)
def _catches_sigterm(pid: int) -> bool:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except OSError:
        pass
    return False


def interrupt_run(sig: int, delay_s: float) -> Callable:
    """``bmiss decompose rec.npz --method cbss --force --out existing.npz``, signalled ``delay_s`` after
    bmiss's handler is in place: exit 130, one line, the existing output untouched."""
    def run(work):
        out = work / f"existing_{signal.Signals(sig).name}_{delay_s:g}.npz"
        out.write_bytes(b"the user's existing output")
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        env.setdefault("JAX_PLATFORMS", "cpu")
        from bmiss import interrupts

        p = subprocess.Popen(interrupts.command("decompose", str(work / "rec.npz"), "--method", "cbss",
                                                "--n-iter", "10000", "--quiet", "--force", "--out", str(out)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=work)
        t0 = time.monotonic()
        while not _catches_sigterm(p.pid) and p.poll() is None and time.monotonic() - t0 < 60:
            time.sleep(0.005)
        time.sleep(delay_s)
        if p.poll() is not None:
            return False, f"finished (exit {p.returncode}) before the signal"
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        problems = []
        if p.returncode != 130:
            problems.append(f"exit {p.returncode}")
        if len(lines) != 1 or "interrupted" not in lines[0]:
            problems.append(f"stderr {len(lines)} lines")
        if out.read_bytes() != b"the user's existing output":
            problems.append("the existing output was replaced")
        out.unlink()
        return (not problems), "; ".join(problems) or lines[0]
    return run


# ------------------------------------------------------------------ checks with a result to inspect
def _export_units_json(work):
    out = work / "units.json"
    rc, stdout, err = _cli(["export", "dec.npz", "--recording", "rec.npz", "--out", "units.json"], work)
    try:
        doc = json.loads(out.read_text())
        ok = rc == 0 and isinstance(doc.get("units"), list) and "per-MU JSON" in stdout
    except Exception as e:  # noqa: BLE001
        ok, stdout = False, f"not per-unit JSON ({type(e).__name__}); {err.strip()[:120]}"
    finally:
        if out.exists():
            out.unlink()
    return ok, stdout.strip()[:200]


def _simulate_named_grid(work):
    from bmiss import io as bio

    out = work / "ta.npz"
    rc, stdout, err = _cli(["simulate", "--anatomy", "tibialis_anterior", "--electrode", "GR08MM1305",
                            "--duration", "0.5", "--n-units", "3", "--muap-mode", "expected", "--out", "ta.npz"], work)
    if rc != 0:
        return False, err.strip()[:200]
    rec = bio.load_recording(out)
    out.unlink()
    return rec.ied_mm == 8.0 and rec.electrode == "GR08MM1305", f"stored {rec.electrode} at {rec.ied_mm} mm"


def _negative_snr(work):
    rc, _, err = _cli(["simulate", "--snr", "-1e1", "--out", "a37"], work)  # refused for the name, not the SNR
    return rc == 2 and "has no suffix" in err and "--snr" not in err, err.strip()[:200]


def _deconvolve_help(work):
    from bmiss import cli
    from bmiss.pipeline import settings as S

    h = " ".join(cli.build_parser()._bmiss_subparsers["decompose"].format_help().split())
    says = "on for --method bmiss, off for cbss and oracle" in h
    on = {m: bool(getattr(r.deconvolve, "enabled", r.deconvolve)) for m, r in S.METHOD_RULES.items()}
    true = on == {"bmiss": True, "cbss": False, "oracle": False}
    return says and true, "help: on for bmiss, off for cbss/oracle; settings agree" if says and true else h[:200]


def _fit_min_sil(work):
    from bmiss import cli

    h = cli.build_parser()._bmiss_subparsers["fit"].format_help()
    return "--min-sil" in h, "fit has --min-sil (the too-few-units advice names it)"


def _emg_unit(work):
    from bmiss import cli

    src = (ROOT / "bmiss" / "formats.py").read_text()
    h = cli.build_parser()._bmiss_subparsers["decompose"].format_help()
    ok = "--emg-unit" in h and "--emg-unit uV" in src
    return ok, "the .mat unit warning names --emg-unit, which exists" if ok else "warning or option missing"


def _bmiss_fit(work):
    import bmiss
    from bmiss import api

    return bmiss.fit is api.fit, f"bmiss.fit is {bmiss.fit.__module__}.{bmiss.fit.__name__}"


def _settings_bool(key: str):
    def run(work):
        import inspect

        from bmiss.cli import _parse_settings

        item = [f"{key}={dict(deconvolve='false', peel='no', dedupe='off')[key]}"]
        v = _parse_settings(item, "bmiss") if len(inspect.signature(_parse_settings).parameters) > 1 \
            else _parse_settings(item)
        return v.get(key) is False, f"parsed as {v.get(key)!r}"
    return run


def _sil_threshold_api(work):
    from bmiss import api, io as bio

    rec = bio.load_recording(work / "rec.npz")
    try:
        api.decompose(rec, "cbss", progress=False, sil_threshold=5, n_iter=1)
    except Exception as e:  # noqa: BLE001
        from bmiss.errors import BmissError

        return isinstance(e, BmissError) and "sil_threshold" in str(e), " ".join(str(e).split())[:200]
    return False, "accepted sil_threshold=5 (0 units, no message)"


def _fs_vs_fingerprint(work):
    from bmiss import io as bio

    d = bio.load_decomposition(work / "dec.npz")
    d.fs = 4096.0
    bio.save_decomposition(work / "dec4096.npz", d)
    try:
        return refused(["export", "dec4096.npz", "--recording", "rec.npz", "--format", "mu-csv", "--out", "mn.csv"],
                       "fs")(work)
    finally:
        (work / "dec4096.npz").unlink()


def _hostile_file(name: str, writer: Callable[[Path], None], argv: list[str], says: str = "", forbid: str = ""):
    def run(work):
        p = work / name
        writer(p)
        try:
            return refused(argv, says, forbid=forbid)(work)
        finally:
            if p.exists():
                p.unlink()
    return run


def _npz(**arrays):
    def w(p):
        np.savez(p, **arrays)
    return w


def _truncated(p):
    src = (Path(p).parent / "rec.npz").read_bytes()
    Path(p).write_bytes(src[: len(src) // 2])


def _truth_past_end(p):
    """rec.npz (the recording dec.npz was made from: same EMG) with one true discharge past its end."""
    with np.load(Path(p).parent / "rec.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["true_spikes"] = np.append(arrays["true_spikes"], arrays["emg"].shape[1] + 500)
    arrays["true_spikes_offsets"] = arrays["true_spikes_offsets"].copy()
    arrays["true_spikes_offsets"][-1] += 1
    np.savez(p, **arrays)


def _map_json(p):
    Path(p).write_text(json.dumps({"rows": 4, "cols": 4, "ied_mm": "ten", "channel_map": [[r, c] for r in range(4)
                                                                                           for c in range(4)]}))


def _map_csv_bad(p):
    Path(p).write_text("# ied_mm = abc\nchannel,row,col\n" + "".join(f"{4 * r + c},{r},{c}\n" for r in range(4)
                                                                    for c in range(4)))


def _band_recorded_as_used(work):
    """``--setting band=(20,5000)`` at 2048 Hz: refused naming band, or run with the band actually used recorded."""
    from bmiss import io as bio

    rc, _, err = _cli(["decompose", "rec.npz", "--method", "cbss", "--n-iter", "1", "--quiet", "--out", "o.npz",
                       "--setting", "band=(20,5000)"], work)
    if rc == 2:
        return "band" in err and len(err.strip().splitlines()) == 1, err.strip()[:200]
    if rc != 0:
        return False, f"exit {rc}: {err.strip()[-160:]}"
    st = bio.load_decomposition(work / "o.npz").meta.get("settings", {})
    band = (st.get("rules") or st).get("band") if isinstance(st, dict) else None
    hi = band[1] if isinstance(band, (list, tuple)) and len(band) == 2 else None
    return hi is not None and hi < FS / 2, f"ran; meta records band {band}"


# ------------------------------------------------------------------ the cases
def cases() -> list[Case]:
    C = []

    def add(id_, owner, what, run, fast=True, group=""):
        C.append(Case(id_, owner, what, _check(run), fast, group))

    # data loss
    for sig, d in ((signal.SIGINT, 0.0), (signal.SIGINT, 1.0), (signal.SIGINT, 2.5), (signal.SIGTERM, 0.0),
                   (signal.SIGTERM, 1.5)):
        add(f"interrupt-{signal.Signals(sig).name}-{d:g}s", OWN,
            f"kill -{signal.Signals(sig).name[3:]} at +{d:g} s: bmiss decompose rec.npz --method cbss --force "
            "--out existing.npz", interrupt_run(sig, d), fast=False, group="data loss")
    add("api-export-dec-onto-itself", OWN, "bmiss.export('dec.npz', 'dec.npz', 'csv', force=True)",
        api_refused(lambda w: __import__("bmiss").export("dec.npz", "dec.npz", "csv", force=True), "dec.npz"),
        group="data loss")
    add("api-export-onto-recording", OWN, "bmiss.export(dec, 'rec.npz', 'openhdemg', rec='rec.npz', force=True)",
        api_refused(lambda w: __import__("bmiss").export(__import__("bmiss").load_decomposition("dec.npz"), "rec.npz",
                                                          "openhdemg", rec="rec.npz", force=True), "rec.npz"),
        group="data loss")
    add("api-save-decomposition-default", OWN, "bmiss.save_decomposition('rec.npz', dec)",
        api_refused(lambda w: __import__("bmiss").save_decomposition(
            "rec.npz", __import__("bmiss").load_decomposition("dec.npz")), "exists"), group="data loss")
    add("api-save-decomposition-onto-its-recording", OWN, "bmiss.save_decomposition('rec.npz', dec, force=True)",
        api_refused(lambda w: __import__("bmiss").save_decomposition(
            "rec.npz", __import__("bmiss").load_decomposition("dec.npz"), force=True), "recording"), group="data loss")

    # silent wrong results
    add("simulate-named-grid-geometry", OWN, "simulate --anatomy tibialis_anterior --electrode GR08MM1305",
        _simulate_named_grid, fast=False, group="silent wrong result")
    add("simulate-out-no-suffix", OWN, "simulate --out a37", refused(["simulate", "--out", "a37"], "suffix"),
        group="silent wrong result")
    add("simulate-out-txt", OWN, "simulate --out a38.txt", refused(["simulate", "--out", "a38.txt"], ".txt"),
        group="silent wrong result")
    add("decompose-out-folder", OWN, "decompose rec.npz --out newdir/",
        refused(["decompose", "rec.npz", "--out", "newdir/"], "folder"), group="silent wrong result")
    add("export-units-json", OWN, "export dec.npz --recording rec.npz --out units.json", _export_units_json,
        group="silent wrong result")
    for key in ("deconvolve", "peel", "dedupe"):
        add(f"setting-{key}-false", SETTINGS,
            f"--setting {key}={dict(deconvolve='false', peel='no', dedupe='off')[key]}",
            _settings_bool(key), group="silent wrong result")
    add("setting-band=(20,5000)", SETTINGS, "decompose --setting band=(20,5000) at 2048 Hz", _band_recorded_as_used,
        fast=False, group="silent wrong result")
    for s in ("min_spikes=-1", "n_iter=1.5", "max_fp_iter=0"):
        add(f"setting-{s}", SETTINGS, f"decompose --setting {s}",
            refused(["decompose", "rec.npz", "--method", "cbss", "--quiet", "--out", "o.npz", "--setting", s],
                    s.split("=")[0], allow_new=("o.npz",)), fast=False, group="silent wrong result")
    add("api-sil-threshold-5", SETTINGS, "bmiss.decompose(rec, 'cbss', sil_threshold=5)", _sil_threshold_api,
        fast=False, group="silent wrong result")
    add("dec-fs-vs-fingerprint", READERS, "export dec(fs 4096, fingerprint 2048) --recording rec.npz",
        _fs_vs_fingerprint, group="silent wrong result")
    add("truth-past-the-end", READERS, "evaluate dec.npz --truth rec_with_spike_past_end.npz",
        _hostile_file("late.npz", _truth_past_end, ["evaluate", "dec.npz", "--truth", "late.npz"], "true_spikes"),
        group="silent wrong result")

    # tracebacks on user input
    for s in ("sil_threshold=nan", "sil_threshold=abc", "min_distance_ms=nan", "R=abc", "band=(500,20)"):
        add(f"setting-{s}", SETTINGS, f"decompose --setting {s}",
            refused(["decompose", "rec.npz", "--method", "cbss", "--quiet", "--out", "o.npz", "--setting", s],
                    s.split("=")[0]), group="traceback")
    add("npz-fs-1e9", READERS, "decompose fs1e9.npz (fs = 1e9)",
        _hostile_file("fs1e9.npz", _npz(emg=np.random.default_rng(1).normal(size=(16, 4096)), fs=1e9),
                      ["decompose", "fs1e9.npz", "--method", "cbss"], "fs"), group="traceback")
    add("channel-map-json-ten", READERS, "decompose rec.npz --electrode map.json (ied_mm: 'ten')",
        _hostile_file("map.json", _map_json, ["decompose", "rec.npz", "--method", "cbss", "--electrode", "map.json"],
                      "ied"), group="traceback")
    add("channel-map-csv-abc", READERS, "decompose rec.npz --electrode map.csv (# ied_mm = abc)",
        _hostile_file("map.csv", _map_csv_bad, ["decompose", "rec.npz", "--method", "cbss", "--electrode", "map.csv"],
                      "ied"), group="traceback")

    # misleading messages
    add("duration-0.001", OWN, "simulate --duration 0.001 --out a.npz",
        refused(["simulate", "--duration", "0.001", "--out", "a.npz"], "--duration"), group="misleading")
    add("snr-minus-1e1", OWN, "simulate --snr -1e1", _negative_snr, group="misleading")
    add("anatomy-empty", OWN, "simulate --anatomy '' --out a.npz",
        refused(["simulate", "--anatomy", "", "--out", "a.npz"], "--anatomy: is empty"), group="misleading")
    add("ied-0.1", OWN, "decompose rec.npz --grid 4x4 --ied 0.1",
        refused(["decompose", "rec.npz", "--grid", "4x4", "--ied", "0.1"], "[0.5, 100] mm"), group="misleading")
    add("units-uV-advice", OWN, ".mat warning advises units='uV' on the CLI", _emg_unit, group="misleading")
    add("fit-min-sil-advice", OWN, "fit advises --min-sil", _fit_min_sil, group="misleading")
    add("unknown-argument", OWN, "decompose rec.npz --bogus",
        refused(["decompose", "rec.npz", "--bogus"], "bmiss decompose: error: unrecognized"), group="misleading")
    add("n-iter-oracle", OWN, "decompose rec.npz --method oracle --n-iter 5",
        refused(["decompose", "rec.npz", "--method", "oracle", "--n-iter", "5"], "--n-iter"), group="misleading")
    add("deconvolve-help", OWN, "decompose --help (--deconvolve)", _deconvolve_help, group="misleading")
    add("bmiss-fit-is-the-function", OWN, "bmiss.fit(...) from the README", _bmiss_fit, group="misleading")
    add("api-decompose-none", OWN, "bmiss.decompose(None)",
        api_refused(lambda w: __import__("bmiss").decompose(None), "rec must be"), group="misleading")
    add("api-evaluate-swapped", OWN, "bmiss.evaluate(rec, dec)",
        api_refused(lambda w: __import__("bmiss").evaluate(__import__("bmiss").load_recording("rec.npz"),
                                                           __import__("bmiss").load_decomposition("dec.npz")),
                    "swapped"), group="misleading")
    add("api-seed-minus-1", OWN, "bmiss.decompose(rec, 'cbss', seed=-1)",
        api_refused(lambda w: __import__("bmiss").decompose("rec.npz", "cbss", seed=-1), "seed must be an integer"),
        group="misleading")
    add("api-max-units-0", OWN, "bmiss.api.fit(rec, max_units=0)",
        api_refused(lambda w: __import__("bmiss.api").api.fit("rec.npz", max_units=0), "max_units"),
        group="misleading")
    add("api-n-iter-abc", SETTINGS, "bmiss.decompose(rec, 'cbss', n_iter='abc')",
        api_refused(lambda w: __import__("bmiss").decompose("rec.npz", "cbss", n_iter="abc", progress=False),
                    "n_iter"), fast=False, group="misleading")
    add("npz-truncated", READERS, "decompose truncated.npz",
        _hostile_file("cut.npz", _truncated, ["decompose", "cut.npz", "--method", "cbss"],
                      forbid="not an .npz archive"),
        group="misleading")
    add("npz-1e40", READERS, "decompose big.npz (finite 1e40 values)",
        _hostile_file("big.npz", _npz(emg=np.full((4, 4096), 1e40), fs=2048.0),
                      ["decompose", "big.npz", "--method", "cbss"], forbid="NaN"), group="misleading")
    try:  # the formats helper's reader cases, when present
        sys.path.insert(0, str(ROOT / "experiments"))
        import hostile_readers  # type: ignore

        for c in hostile_readers.cases():
            C.append(c)
    except ImportError:
        pass
    return C


def run_cases(selected: list[Case], work: Path | None = None) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bmiss_hostile_") as tmp:
        work = Path(work or tmp)
        make_inputs(work)
        for c in selected:
            t = time.perf_counter()
            try:
                ok, detail = c.run(work)
            except Exception:  # noqa: BLE001
                ok, detail = False, traceback.format_exc().strip().splitlines()[-1]
            rows.append({"id": c.id, "owner": c.owner, "group": c.group, "what": c.what,
                         "verdict": "ok" if ok else "bad", "detail": detail, "time_s": round(time.perf_counter() - t, 2)})
            for p in work.iterdir():  # leave the inputs as they were for the next case
                if p.name not in ("rec.npz", "dec.npz", "existing.npz"):
                    if p.is_dir():
                        import shutil

                        shutil.rmtree(p)
                    else:
                        p.unlink()
    return rows


def print_table(rows: list[dict]) -> None:
    for verdict in ("bad", "ok"):
        sel = [r for r in rows if r["verdict"] == verdict]
        print(f"\n== {verdict}: {len(sel)} ==")
        for r in sel:
            print(f"  {r['id']:42s} {r['owner']:18s} {r['what'][:60]:60s} | {r['detail'][:110]}")
    by_owner = {}
    for r in rows:
        by_owner.setdefault(r["owner"], [0, 0])[r["verdict"] == "ok"] += 1
    print("\n" + "; ".join(f"{o}: {ok} ok, {bad} bad" for o, (bad, ok) in by_owner.items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true", help="only the fast cases (no subprocesses, no simulation)")
    ap.add_argument("--only", nargs="+", default=None, help="case ids")
    ap.add_argument("--out", default=str(ROOT / "results" / "hostile_inputs.json"))
    a = ap.parse_args(argv)
    sel = [c for c in cases() if (not a.fast or c.fast) and (a.only is None or c.id in a.only)]
    t0 = time.perf_counter()
    rows = run_cases(sel)
    print_table(rows)
    from bmiss.files import provenance, write_json

    doc = {"provenance": provenance(fast=a.fast, only=a.only), "n_cases": len(rows),
           "n_ok": sum(r["verdict"] == "ok" for r in rows), "n_bad": sum(r["verdict"] == "bad" for r in rows),
           "total_time_s": round(time.perf_counter() - t0, 1), "cases": rows}
    write_json(a.out, doc)
    print(f"\nwrote {a.out}: {doc['n_ok']} ok, {doc['n_bad']} bad of {len(rows)} ({doc['total_time_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
