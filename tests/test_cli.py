"""End to end, in process: every subcommand through ``bmiss.cli.main`` on a tiny simulated recording
(3 s, 8 MUs, biceps grid), and what the CLI promises: no output overwritten without --force, none
written half, inputs checked before the work, a decomposition refused with another recording,
one-line user errors (exit 2), internal errors with their traceback (exit 1), Ctrl-C (exit 130)."""
import csv
import gzip
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from bmiss import cli
from bmiss import io as bio
from bmiss.cli import main

from plotcheck import visible

TINY = ["--duration", "3", "--n-units", "8", "--seed", "0", "--snr", "20"]


def _err_line(capsys, cmd: str) -> str:
    """The command's stderr, which must be exactly one ``bmiss CMD: error: ...`` line."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"bmiss {cmd}: error: "), err
    return err


def _visible(ax) -> list[np.ndarray]:
    """Polylines of ``ax`` with more than one point inside the view and a non-zero y range."""
    return [sg for sg in visible(ax) if len(sg) > 1 and np.ptp(sg[:, 1]) > 0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with rec.npz (+ rec.png) from `bmiss simulate` and oracle.npz from `bmiss decompose`."""
    d = tmp_path_factory.mktemp("cli")
    assert main(["simulate", *TINY, "--out", str(d / "rec.npz"), "--figures"]) == 0
    assert main(["decompose", str(d / "rec.npz"), "--method", "oracle", "--quiet", "--out", str(d / "oracle.npz")]) == 0
    return d


# ------------------------------------------------------------------ each subcommand, end to end
def test_simulate(work):
    rec = bio.load_recording(work / "rec.npz")
    assert rec.n_samples == 3 * 2048 and rec.n_channels == 64 and len(rec.true_spikes) == 8
    assert sum(len(s) > 0 for s in rec.true_spikes) >= 3 and rec.true_muaps.shape[:2] == (8, 64)
    assert rec.meta["seed"] == 0 and rec.meta["snr_db"] == 20
    assert (work / "rec.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in work.iterdir() if p.name.endswith(".tmp")]


def test_decompose_oracle_stores_the_recording_fingerprint(work):
    dec = bio.load_decomposition(work / "oracle.npz")
    rec = bio.load_recording(work / "rec.npz")
    assert dec.method == "oracle" and dec.n_units == 8 and dec.sources.shape == (8, rec.n_samples)
    assert dec.meta["recording"] == bio.recording_fingerprint(rec)


def test_decompose_cbss_and_evaluate(work, capsys):
    out = work / "cbss.npz"
    assert main(["decompose", str(work / "rec.npz"), "--method", "cbss", "--n-iter", "12", "--seed", "0", "--quiet",
                 "--out", str(out)]) == 0
    dec = bio.load_decomposition(out)
    assert dec.method == "cbss" and dec.n_units >= 1
    assert dec.meta["recording"]["n_samples"] == 3 * 2048
    capsys.readouterr()
    assert main(["evaluate", str(out), "--truth", str(work / "rec.npz"), "--json", str(work / "cbss_report.json")]) == 0
    rep = json.loads((work / "cbss_report.json").read_text())
    assert rep["summary"]["n_true"] == 8 and rep["summary"]["n_est"] == dec.n_units
    assert rep["summary"]["found_80"] >= 1  # the blind baseline finds at least the biggest unit
    assert "found >=0.9" in capsys.readouterr().out


def test_evaluate_json_never_overwritten_without_force(work, capsys):
    rec, dec, js = work / "rec.npz", work / "oracle.npz", work / "oracle_report.json"
    assert main(["evaluate", str(dec), "--truth", str(rec), "--json", str(js)]) == 0
    rep = json.loads(js.read_text())
    assert rep["summary"]["found_90"] >= 3 and rep["method"] == "oracle"
    before = js.read_bytes()
    js.write_text("keep me")
    capsys.readouterr()
    assert main(["evaluate", str(dec), "--truth", str(rec), "--json", str(js)]) == 2
    assert "--force" in _err_line(capsys, "evaluate") and js.read_text() == "keep me"
    assert main(["evaluate", str(dec), "--truth", str(rec), "--json", str(js), "--force"]) == 0
    assert js.read_bytes() == before
    # the ground truth itself as --json: refused even with --force, and the recording survives
    truth = rec.read_bytes()
    for extra in ([], ["--force"]):
        assert main(["evaluate", str(dec), "--truth", str(rec), "--json", str(rec), *extra]) == 2
        assert "also an input" in _err_line(capsys, "evaluate")
    assert rec.read_bytes() == truth


def test_export_each_format(work, capsys):
    dec = bio.load_decomposition(work / "oracle.npz")
    n_spikes = sum(len(s) for s in dec.spikes)
    d = work / "export"
    assert main(["export", str(work / "oracle.npz"), "--out", str(d / "units.csv")]) == 0
    rows = list(csv.DictReader((d / "units.csv").open()))
    assert len(rows) == dec.n_units
    assert main(["export", str(work / "oracle.npz"), "--out", str(d / "units.json")]) == 0
    doc = json.loads((d / "units.json").read_text())
    assert doc["n_units"] == dec.n_units == len(doc["units"]) and doc["method"] == "oracle"
    assert main(["export", str(work / "oracle.npz"), "--out", str(d / "sub-01_events.tsv")]) == 0
    lines = (d / "sub-01_events.tsv").read_text().strip().splitlines()
    assert len(lines) == n_spikes + 1  # header + one row per discharge
    assert main(["export", str(work / "oracle.npz"), "--recording", str(work / "rec.npz"), "--format", "openhdemg",
                 "--out", str(d / "emgfile.json")]) == 0
    emgfile = json.loads(gzip.decompress((d / "emgfile.json").read_bytes()))
    assert {"RAW_SIGNAL", "MUPULSES", "FSAMP", "NUMBER_OF_MUS"} <= set(emgfile)
    # every output refused without --force, kept intact
    capsys.readouterr()
    for name in ("units.csv", "units.json", "sub-01_events.tsv"):
        before = (d / name).read_bytes()
        assert main(["export", str(work / "oracle.npz"), "--out", str(d / name)]) == 2
        assert "--force" in _err_line(capsys, "export") and (d / name).read_bytes() == before
    assert main(["export", str(work / "oracle.npz"), "--out", str(d / "units.csv"), "--force"]) == 0
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


def test_export_motor_neuron_properties_and_drive(work):
    dec = bio.load_decomposition(work / "oracle.npz")
    active = [i for i in range(dec.n_units) if len(dec.spikes[i]) >= 5]
    d = work / "export_mn"
    assert main(["export", str(work / "oracle.npz"), "--recording", str(work / "rec.npz"), "--format", "mu-csv",
                 "--out", str(d / "mu.csv")]) == 0
    lines = (d / "mu.csv").read_text().splitlines()
    head, units = lines[0].split(","), lines[1].split(",")
    assert units[0] == "# units" and "rel_RT" in head and "DR_all" in head
    rows = [dict(zip(head, ln.split(","))) for ln in lines[2:]]
    assert len(rows) == dec.n_units
    # recruitment thresholds are fractions of the simulated excitation (0..1) for active units
    rt = [float(r["rel_RT"]) for r in rows if r["rel_RT"] not in ("", "nan")]
    assert rt and all(0.0 <= v <= 1.0 for v in rt) and len(rt) >= len(active) // 2
    assert main(["export", str(work / "oracle.npz"), "--recording", str(work / "rec.npz"), "--format", "drive-json",
                 "--out", str(d / "drive.json")]) == 0
    doc = json.loads((d / "drive.json").read_text())
    assert doc["n_units"] == dec.n_units and max(v for v in doc["cst_smoothed_pps"] if v is not None) > 0


def test_figures(work, capsys, monkeypatch):
    from bmiss import figures

    drawn = {}
    for name in ("simulation_overview", "muap_map", "emg_stretch", "raster", "decomposition_vs_truth", "drive_rates"):
        orig = getattr(figures, name)
        monkeypatch.setattr(figures, name, lambda *a, _f=orig, _n=name, **k: drawn.setdefault(_n, _f(*a, **k)))
    out = work / "figs"
    assert main(["figures", str(work / "rec.npz"), "--decomposition", str(work / "oracle.npz"), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["drive.png", "emg.png", "muaps.png", "overview.png", "raster.png", "vs_truth.png"]
    for p in out.iterdir():
        assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 5000
    assert len(drawn) == 6
    for name, fig in drawn.items():  # each figure shows data, not empty axes
        assert max(len(_visible(ax)) for ax in fig.axes) >= 5, name
    # a second run refuses before writing anything; --force rewrites
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main(["figures", str(work / "rec.npz"), "--decomposition", str(work / "oracle.npz"), "--out", str(out)]) == 2
    assert "--force" in _err_line(capsys, "figures")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp
    assert main(["figures", str(work / "rec.npz"), "--out", str(out), "--force"]) == 0
    # a missing input is found before the first PNG
    out2 = work / "figs_missing"
    assert main(["figures", str(work / "rec.npz"), "--decomposition", str(work / "nope.npz"), "--out", str(out2)]) == 2
    assert "nope.npz" in _err_line(capsys, "figures") and not out2.exists()


def test_anatomies(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "biceps_brachii").mkdir()  # a folder named like a shipped anatomy must not shadow it
    assert main(["anatomies"]) == 0
    out = capsys.readouterr().out
    for name in ("biceps_brachii", "tibialis_anterior", "forearm_flexors"):
        assert name in out
    assert "13x5" in out


def test_demo_tiny(work, tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", *TINY, "--methods", "oracle", "--out", str(out)]
    assert main(argv) == 0
    names = {p.name for p in out.iterdir()}
    assert {"recording.npz", "simulation.png", "decomposition_oracle.npz", "report_oracle.json",
            "demo_summary.json"} <= names
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["results"]["oracle"]["summary"]["n_true"] == 8 and summary["config"]["methods"] == ["oracle"]
    # same settings as the fixture's simulate: the same recording
    np.testing.assert_array_equal(bio.load_recording(out / "recording.npz").emg, bio.load_recording(work / "rec.npz").emg)
    listed = capsys.readouterr().out.strip().splitlines()[-1]  # the files it wrote, and only those
    assert "decomposition_oracle.npz" in listed and "bmiss" not in listed.split("(")[1]
    assert main(argv) == 0  # a demo folder is the demo's to rewrite
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # a folder that is not a demo's: its recording.npz is not overwritten without --force
    other = tmp_path / "mine"
    other.mkdir()
    (other / "recording.npz").write_text("my data")
    capsys.readouterr()
    assert main(["demo", *TINY, "--methods", "oracle", "--out", str(other)]) == 2
    assert "--force" in _err_line(capsys, "demo") and (other / "recording.npz").read_text() == "my data"
    assert sorted(p.name for p in other.iterdir()) == ["recording.npz"]


# ------------------------------------------------------------------ pairing a decomposition with its recording
def test_decomposition_of_another_recording_is_refused(work, capsys):
    rec = bio.load_recording(work / "rec.npz")
    other = bio.Recording(emg=rec.emg * 1.001, fs=rec.fs, grid_shape=rec.grid_shape, ied_mm=rec.ied_mm,
                          channel_map=rec.channel_map, true_spikes=rec.true_spikes, true_muaps=rec.true_muaps)
    bio.save_recording(work / "other.npz", other)
    fast = bio.Recording(emg=rec.emg, fs=2 * rec.fs, true_spikes=rec.true_spikes)
    bio.save_recording(work / "fast.npz", fast)
    dec = str(work / "oracle.npz")
    capsys.readouterr()
    for argv in (["evaluate", dec, "--truth", str(work / "other.npz")],
                 ["export", dec, "--recording", str(work / "other.npz"), "--format", "openhdemg",
                  "--out", str(work / "x.json")],
                 ["figures", str(work / "other.npz"), "--decomposition", dec, "--out", str(work / "xfigs")]):
        assert main(argv) == 2
        err = _err_line(capsys, argv[0])
        assert "does not belong" in err and "content hash" in err and "other.npz" in err
    assert not (work / "x.json").exists() and not (work / "xfigs").exists()
    assert main(["evaluate", dec, "--truth", str(work / "fast.npz")]) == 2
    assert "fs 2048 Hz vs 4096 Hz" in _err_line(capsys, "evaluate")
    # an old decomposition without a fingerprint is still checked on fs / length
    old = bio.load_decomposition(work / "oracle.npz")
    del old.meta["recording"]
    bio.save_decomposition(work / "old.npz", old)
    assert main(["evaluate", str(work / "old.npz"), "--truth", str(work / "rec.npz")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(work / "old.npz"), "--truth", str(work / "fast.npz")]) == 2
    assert "fs 2048 Hz vs 4096 Hz" in _err_line(capsys, "evaluate")


# ------------------------------------------------------------------ options and inputs
@pytest.mark.parametrize("argv", [
    ["simulate", "--n-units", "0", "--out", "x.npz"],
    ["simulate", "--snr", "nan", "--out", "x.npz"],
    ["simulate", "--snr", "-500", "--out", "x.npz"],
    ["simulate", "--duration", "0", "--out", "x.npz"],
    ["simulate", "--duration", "-3", "--out", "x.npz"],
    ["simulate", "--seed", "-1", "--out", "x.npz"],
    ["simulate", "--powerline-uv", "-1", "--out", "x.npz"],
    ["decompose", "r.npz", "--n-iter", "0"],
    ["decompose", "r.npz", "--extension-factor", "0"],
    ["decompose", "r.npz", "--ied", "0"],
    ["decompose", "r.npz", "--seed", "-2"],
    ["decompose", "r.npz", "--grid", "0x0"],
    ["decompose", "r.npz", "--grid=-8x-8"],
    ["demo", "--duration", "0"],
    ["demo", "--n-units", "0"],
    ["demo", "--snr", "nan"],
    ["figures", "r.npz", "--units", "-1"],
])
def test_bad_numbers_are_refused_with_the_allowed_range(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = _err_line(capsys, argv[0])
    assert "allowed" in err or "must be" in err, err
    assert list(tmp_path.iterdir()) == []


def test_bad_excitation_is_refused_before_simulating(tmp_path, capsys, monkeypatch):
    from bmiss import api

    monkeypatch.setattr(api, "simulate", lambda *a, **k: pytest.fail("simulated despite a bad option"))
    assert main(["simulate", "--excitation", "trapezoid:7", "--out", str(tmp_path / "x.npz")]) == 2
    assert "--excitation" in _err_line(capsys, "simulate")


def test_inputs_and_outputs_checked_before_the_work(work, tmp_path, capsys, monkeypatch):
    from bmiss import api

    monkeypatch.setattr(api, "simulate", lambda *a, **k: pytest.fail("work started"))
    monkeypatch.setattr(api, "decompose", lambda *a, **k: pytest.fail("work started"))
    rec = str(work / "rec.npz")
    # a folder as --out: refused, with or without --force (it used to crash after "pass --force")
    for extra in ([], ["--force"]):
        assert main(["decompose", rec, "--method", "oracle", "--out", str(tmp_path), *extra]) == 2
        assert "is a folder" in _err_line(capsys, "decompose")
    # simulate --figures: an existing PNG next to --out is an output too
    (tmp_path / "sim.png").write_text("my figure")
    assert main(["simulate", "--figures", "--out", str(tmp_path / "sim.npz")]) == 2
    assert "sim.png exists" in _err_line(capsys, "simulate") and (tmp_path / "sim.png").read_text() == "my figure"
    # the recording as its own output
    assert main(["decompose", rec, "--method", "oracle", "--out", rec, "--force"]) == 2
    assert "also an input" in _err_line(capsys, "decompose")
    # a folder that cannot be written (simulated: the tests may run as root)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == tmp_path else real_access(p, mode, **k))
    assert main(["simulate", "--out", str(tmp_path / "x.npz")]) == 2
    assert "not writable" in _err_line(capsys, "simulate")
    monkeypatch.setattr(os, "access", real_access)
    # a file where a folder is needed
    (tmp_path / "f").write_text("x")
    assert main(["simulate", "--out", str(tmp_path / "f" / "x.npz")]) == 2
    assert "not a folder" in _err_line(capsys, "simulate")
    assert main(["figures", rec, "--out", str(tmp_path / "f")]) == 2
    assert "is a file" in _err_line(capsys, "figures")
    # an anatomy that is a folder, or no anatomy at all
    for spec in (str(tmp_path), "no_such_anatomy"):
        assert main(["simulate", "--anatomy", spec, "--out", str(tmp_path / "x.npz")]) == 2
        assert spec in _err_line(capsys, "simulate")
    # oracle needs a simulated recording
    bio.save_recording(tmp_path / "measured.npz", bio.Recording(emg=np.zeros((4, 4096)), fs=2048))
    assert main(["decompose", str(tmp_path / "measured.npz"), "--method", "oracle"]) == 2
    assert "true MUAPs" in _err_line(capsys, "decompose")
    assert main(["evaluate", str(work / "oracle.npz"), "--truth", str(tmp_path / "measured.npz")]) == 2
    assert "ground truth" in _err_line(capsys, "evaluate")


@pytest.mark.parametrize("case", ["missing", "text_as_npz", "dec_without_offsets", "rec_truth_without_offsets",
                                  "fs_array", "recording_as_decomposition"])
def test_bad_input_files_give_one_line(case, work, tmp_path, capsys):
    p = tmp_path / "bad.npz"
    cmd = ["evaluate", str(p), "--truth", str(work / "rec.npz")]
    if case == "text_as_npz":
        p.write_text("this is not a numpy archive\n")
    elif case == "dec_without_offsets":
        np.savez(p, spikes=np.arange(5), sources=np.zeros((1, 6144), np.float32), fs=2048.0, method="x")
    elif case == "rec_truth_without_offsets":
        np.savez(p, emg=np.zeros((4, 4096), np.float32), fs=2048.0, true_spikes=np.arange(5))
        cmd = ["evaluate", str(work / "oracle.npz"), "--truth", str(p)]
    elif case == "fs_array":
        np.savez(p, emg=np.zeros((4, 4096), np.float32), fs=np.array([2048.0, 4096.0]))
        cmd = ["decompose", str(p), "--method", "cbss", "--out", str(tmp_path / "d.npz")]
    elif case == "recording_as_decomposition":
        cmd = ["evaluate", str(work / "rec.npz"), "--truth", str(work / "rec.npz")]
    assert main(cmd) == 2
    err = _err_line(capsys, cmd[0])
    assert "allow_pickle" not in err  # never advise unpickling an unknown file


# ------------------------------------------------------------------ failures while running
def test_decompose_rechecks_the_output_before_writing(work, tmp_path, capsys, monkeypatch):
    from bmiss import api

    out = tmp_path / "d.npz"
    dec = bio.load_decomposition(work / "oracle.npz")

    def slow_decompose(rec, method, **kw):  # someone writes the output while we work
        out.write_text("written meanwhile")
        return dec

    monkeypatch.setattr(api, "decompose", slow_decompose)
    assert main(["decompose", str(work / "rec.npz"), "--method", "oracle", "--quiet", "--out", str(out)]) == 2
    err = _err_line(capsys, "decompose")
    assert "appeared while decomposing" in err
    assert out.read_text() == "written meanwhile"
    assert bio.load_decomposition(tmp_path / "d.1.npz").n_units == dec.n_units  # the result is not lost


def test_ctrl_c_exits_130_and_leaves_the_old_output(work, tmp_path, capsys, monkeypatch):
    js = tmp_path / "r.json"
    js.write_text("old report")
    real = Path.write_text

    def interrupted(self, text, *a, **k):
        real(self, text[:10], *a, **k)  # half written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", interrupted)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    rc = main(["evaluate", str(work / "oracle.npz"), "--truth", str(work / "rec.npz"), "--json", str(js), "--force"])
    monkeypatch.setattr(Path, "write_text", real)
    assert rc == 130
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == ["bmiss evaluate: interrupted; no output was left half-written, none written after "
                                "the interrupt"]
    assert js.read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary left
    # main restores the handlers (real SIGINT/SIGTERM: tests/test_interrupts.py)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_internal_errors_keep_their_traceback(monkeypatch, capsys):
    def broken(a):
        raise ValueError("an internal inconsistency")  # a plain ValueError is a bug, not a user error

    monkeypatch.setattr(cli, "cmd_anatomies", broken)
    assert main(["anatomies"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "an internal inconsistency" in err
    assert "bug in bmiss" in err.strip().splitlines()[-1]


def test_argparse_errors_are_one_line(capsys):
    assert main(["simulate"]) == 2  # --out missing
    assert "--out" in _err_line(capsys, "simulate")
    assert main(["nonsense"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bmiss: error:")


@pytest.mark.parametrize("fix, says", [("fatt_mm=3", "did you mean 'fat_mm'"), ("fat_mm=thick", "not a number"),
                                       ("fat_mm=99", "outside the physiological range")])
def test_fit_refuses_a_bad_fix_before_the_work(work, tmp_path, capsys, fix, says):
    out = tmp_path / "subject.toml"
    assert main(["fit", str(work / "rec.npz"), "--out", str(out), "--fix", fix, "--quiet"]) == 2
    assert says in _err_line(capsys, "fit")
    assert not out.exists()
