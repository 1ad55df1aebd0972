"""Reference decompositions (bmiss.reference), `bmiss evaluate --reference`, EMG-BIDS and the
MUedit export, on files whose structure copies the real exports (tests/exports.py)."""
import json
import logging

import numpy as np
import pytest

import exports
from bmiss import bids, formats as F, reference as R
from bmiss.cli import main
from bmiss.errors import BmissFileError, RecordingMismatchError
from bmiss.io import Decomposition, Recording, save_decomposition


@pytest.fixture(scope="module")
def otb(tmp_path_factory):
    p, spikes, emg = exports.otbiolab_mat(tmp_path_factory.mktemp("otb") / "export.mat")
    return p, spikes, emg


def test_otbiolab_export_reads_without_flags(otb, caplog):
    """The 75-column export of issue 18: 64 EMG channels in uV, no warning, decomposition columns
    recognised behind their numbered prefixes."""
    p, _, emg = otb
    with caplog.at_level(logging.WARNING, logger="bmiss"):
        r = F.load_any(p)
    assert not caplog.records, [x.getMessage() for x in caplog.records]
    assert r.n_channels == 64 and r.fs == exports.FS and r.meta["units"] == "from labels"
    np.testing.assert_allclose(r.emg, emg, rtol=1e-5, atol=1e-4)
    assert r.electrode == "GR08MM1305" and r.ied_mm == 8.0
    assert r.meta["ref_label"] == "acquired data[ %(MVC)]" and r.meta["ref_unit"] == "%(MVC)"
    assert len(r.meta["dropped_columns"]) == 10
    assert r.meta["dropped_columns"][0].startswith("1 - 4 - Decomposition of")
    # the same export with Description as a space-padded char matrix
    p2, _, _ = exports.otbiolab_mat(p.with_name("char.mat"), description="char")
    assert F.load_any(p2).n_channels == 64


def test_unclassifiable_columns_are_set_aside(tmp_path, caplog):
    labels = exports.otb_columns() + ["Mystery channel[a.u]", "Temperature[degC]"]
    rng = np.random.default_rng(3)
    data = rng.standard_normal((2048, len(labels)))
    p, _, _ = exports.otbiolab_mat(tmp_path / "x.mat", n_samples=2048, data=data)
    # rewrite with the two extra labels
    from scipy.io import savemat

    desc = np.empty((len(labels), 1), dtype=object)
    for i, x in enumerate(labels):
        desc[i, 0] = x
    savemat(p, {"Data": data, "SamplingFrequency": 2048.0, "Description": desc})
    with caplog.at_level(logging.WARNING, logger="bmiss"):
        r = F.load_any(p)
    msgs = [x.getMessage() for x in caplog.records]
    assert r.n_channels == 64
    assert len(msgs) == 1 and "2 column(s) set aside" in msgs[0] and "'Mystery channel[a.u]'" in msgs[0]
    # only "no EMG channel left" is an error
    savemat(p, {"Data": data[:, :2], "SamplingFrequency": 2048.0, "Description": desc[-2:]})
    with pytest.raises(BmissFileError, match="no EMG column"):
        F.load_any(p)


def test_otbiolab_reference(otb):
    p, spikes, _ = otb
    ref = R.load_reference(p)
    assert ref.origin == "OTBioLab+ .mat" and ref.n_units == 5 and ref.n_samples == 4096
    for a, b in zip(ref.spikes, spikes):
        np.testing.assert_array_equal(a, b)
    assert ref.sources.shape == (5, 4096)
    # the pulse train peaks 8 samples (the extension factor) before the binary train
    assert ref.sources[0, spikes[0] - 8].mean() > 0.9


def _dec_against(spikes, n, fs=exports.FS, lag=-8):
    """A decomposition that finds units 0-2 exactly (shifted by ``lag``), unit 3 with half of its
    discharges moved, misses unit 4 and adds one false unit."""
    rng = np.random.default_rng(7)
    est = [np.clip(s + lag, 0, n - 1) for s in spikes[:3]]
    s3 = spikes[3] + lag
    moved = rng.random(len(s3)) < 0.5
    est.append(np.where(moved, s3 + 40, s3))
    est.append(np.sort(rng.choice(np.arange(50, n - 50), 30, replace=False)))
    return Decomposition(spikes=est, sources=np.zeros((5, n), np.float32), fs=fs, method="cbss",
                         meta={"recording": {"fs": fs, "n_samples": n, "n_channels": 64, "emg_sha256": "0" * 64}})


def test_compare_and_cli(otb, tmp_path, capsys):
    p, spikes, _ = otb
    dec = _dec_against(spikes, 4096)
    rep = R.compare(dec, p)
    pairs = {(q["ref"], q["dec"]): q for q in rep["pairs"]}
    assert {(0, 0), (1, 1), (2, 2)} <= set(pairs)
    assert all(pairs[i, i]["roa"] == 1.0 and pairs[i, i]["lag_ms"] == pytest.approx(8000 / 2048, abs=1e-3)
               for i in range(3))
    assert rep["common_90"] == 3 and rep["only_reference"] == [4] and 4 in rep["only_decomposition"]
    assert rep["common_80"] == 3 and (3, 3) in pairs and 0.2 < pairs[3, 3]["roa"] < 0.8
    # the command line prints the table and writes the same report
    dp = tmp_path / "dec.npz"
    save_decomposition(dp, dec)
    out = tmp_path / "agree.json"
    assert main(["evaluate", str(dp), "--reference", str(p), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "RoA >= 0.9: 3" in text and "only in the reference: [4]" in text
    assert json.loads(out.read_text())["common_90"] == 3
    # neither or both of --truth/--reference: one line, exit 2
    assert main(["evaluate", str(dp)]) == 2
    assert "--reference" in capsys.readouterr().err


def test_compare_refuses_another_recording(otb):
    p, spikes, _ = otb
    with pytest.raises(RecordingMismatchError, match="fs 4096"):
        R.compare(_dec_against(spikes, 4096, fs=4096.0), p)
    dec = _dec_against(spikes, 4096)
    dec.meta["recording"]["n_samples"] = 5000
    with pytest.raises(RecordingMismatchError, match="5000 samples"):
        R.compare(dec, p)


def test_demuse_and_muedit_references(tmp_path):
    p, spikes = exports.demuse_mat(tmp_path / "demuse.mat")
    ref = R.load_reference(p)
    assert ref.origin == "DEMUSE .mat" and ref.n_samples == 4096
    for a, b in zip(ref.spikes, spikes):
        np.testing.assert_array_equal(a, b)  # 1-based MATLAB samples -> 0-based
    p, spikes = exports.muedit_mat(tmp_path / "muedit.mat")
    ref = R.load_reference(p)
    assert ref.origin == "MUedit .mat" and ref.sources.shape == (3, 4096)
    for a, b in zip(ref.spikes, spikes):
        np.testing.assert_array_equal(a, b)
    p1, sp1 = exports.muedit_mat(tmp_path / "one.mat", n_units=1)  # a one-unit cell is squeezed by loadmat
    np.testing.assert_array_equal(R.load_reference(p1).spikes[0], sp1[0])


def test_reference_errors(tmp_path, otb):
    from scipy.io import savemat

    p = tmp_path / "late.mat"
    savemat(p, {"MUPulses": np.array([[1.0, 5000.0]]), "IPTs": np.zeros((1, 4096)), "fsamp": 2048.0})
    with pytest.raises(BmissFileError, match="sample 4999, past the recording's end"):
        R.load_reference(p)
    savemat(p, {"MUPulses": np.array([[0.0, 5.0]]), "fsamp": 2048.0})
    with pytest.raises(BmissFileError, match="MUPulses.*before the recording's start"):
        R.load_reference(p)
    savemat(p, {"Data": np.zeros((3000, 2)), "SamplingFrequency": 2048.0,
                "Description": np.array(["a[uV]", "b[uV]"], dtype=object)})
    with pytest.raises(BmissFileError, match="no 'Decomposition of"):
        R.load_reference(p)
    q = tmp_path / "x.txt"
    q.write_text("x")
    with pytest.raises(BmissFileError, match="unsupported reference type"):
        R.load_reference(q)


def test_muedit_export_round_trip(otb, tmp_path):
    p, _, _ = otb
    rec = F.load_any(p)
    ref = R.load_reference(p)
    dec = Decomposition(spikes=ref.spikes, sources=ref.sources, fs=ref.fs, method="x")
    out = F.save_muedit(tmp_path / "units_muedit.mat", dec, rec)
    back = R.load_reference(out)
    assert back.origin == "MUedit .mat" and back.n_samples == rec.n_samples
    for a, b in zip(back.spikes, ref.spikes):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(back.sources, ref.sources, rtol=1e-6)
    from scipy.io import loadmat

    sig = loadmat(out, simplify_cells=True)["signal"]
    assert sig["data"].shape == (64, rec.n_samples) and sig["gridname"] == "GR08MM1305"
    assert sig["Dischargetimes"][0].min() >= 1  # MATLAB indexing


def test_emg_bids_round_trip(otb, tmp_path):
    p, _, _ = otb
    rec = F.load_any(p)
    ref = R.load_reference(p)
    dec = Decomposition(spikes=ref.spikes, sources=ref.sources, fs=ref.fs, method="x")
    rec_short = Recording(emg=rec.emg[:, :3000], fs=rec.fs, electrode=rec.electrode, orientation=rec.orientation,
                          ref_signal=rec.ref_signal[:3000], meta={"ref_unit": "%(MVC)"})
    dec_short = Decomposition(spikes=[s[s < 3000] for s in ref.spikes], sources=ref.sources[:, :3000], fs=ref.fs,
                              method="x")
    paths = bids.save_emg_bids(tmp_path / "bids", rec_short, dec_short, subject="01", task="ramp")
    assert paths["emg"].name == "sub-01_task-ramp_emg.bdf"
    back = F.load_any(paths["emg"])  # through the reader registry
    assert back.n_samples == 3000  # padding of the last BDF data record dropped
    np.testing.assert_allclose(back.emg, rec_short.emg, atol=1e-3)
    np.testing.assert_allclose(back.ref_signal, rec_short.ref_signal, atol=1e-3)
    np.testing.assert_array_equal(back.channel_map, rec_short.channel_map)
    assert back.electrode == "GR08MM1305" and back.ied_mm == 8.0 and back.orientation == rec_short.orientation
    evref = R.load_reference(paths["events"])
    for a, b in zip(evref.spikes, dec_short.spikes):
        np.testing.assert_array_equal(a, b)
    side = json.loads(paths["sidecar"].read_text())
    for k in ("SamplingFrequency", "EMGChannelCount", "EMGReference", "EMGGround", "EMGPlacementScheme",
              "PowerLineFrequency", "SoftwareFilters", "TaskName"):
        assert k in side
    with pytest.raises(FileExistsError):
        bids.save_emg_bids(tmp_path / "bids", rec_short, None, subject="01", task="ramp")
    # a bare BDF (no sidecars) is read too: every voltage signal is EMG, the REF signal is not
    bare = tmp_path / "bare.bdf"
    bare.write_bytes(paths["emg"].read_bytes())
    b2 = F.load_any(bare)
    assert b2.n_channels == 64 and b2.channel_map is None


@pytest.mark.parametrize("size", [2, 4])
def test_otb4_archive(tmp_path, size):
    from bmiss import electrodes as E

    p, emg_uv = exports.otb4_archive(tmp_path / "rec.otb4", sample_size=size)
    r = F.load_any(p)
    assert r.n_channels == 64 and r.fs == 2048.0  # the control track is dropped
    np.testing.assert_allclose(r.emg, emg_uv, rtol=1e-5)
    assert r.electrode == "GR08MM1305" and r.orientation == 180
    np.testing.assert_array_equal(r.channel_map, E.load_layout("GR08MM1305", 180).channel_map)
    bad = tmp_path / "bad.otb4"
    bad.write_bytes(p.read_bytes().replace(b"<NumberOfChannels>64<", b"<NumberOfChannels>99<"))
    with pytest.raises(BmissFileError, match=r"bad.otb4: Tracks_000.xml TrackInfo 1: channels 0..98"):
        F.load_any(bad)


def test_reference_figure(otb, tmp_path):
    from bmiss import figures

    p, spikes, _ = otb
    dec = _dec_against(spikes, 4096)
    rep = R.compare(dec, p)
    ref = R.load_reference(p)
    out = tmp_path / "vs_ref.png"
    fig = figures.reference_comparison(dec.spikes, ref.spikes, ref.fs, rep, out)
    assert out.stat().st_size > 5000
    axl, axr = fig.axes[:2]
    # rows: 4 pairs, 1 reference-only, 1 decomposition-only
    assert len(axl.get_yticklabels()) == 6 and "RoA 1.00" in axr.get_yticklabels()[0].get_text()


def test_muedit_edited_file_prefers_distimeclean(tmp_path):
    """An edited MUedit file: edition.Distimeclean {grid}{unit} (1-based) wins over signal.Dischargetimes."""
    from scipy.io import loadmat, savemat

    p, spikes = exports.muedit_mat(tmp_path / "m.mat", n_units=2)
    sig = loadmat(p)["signal"]
    inner = np.empty((1, 2), dtype=object)
    inner[0, 0] = (spikes[0][::2] + 1).astype(float)[None, :]  # the editor removed every other discharge
    inner[0, 1] = (spikes[1] + 1).astype(float)[None, :]
    outer = np.empty((1, 1), dtype=object)
    outer[0, 0] = inner
    savemat(p, {"signal": sig, "edition": {"Distimeclean": outer}})
    ref = R.load_reference(p)
    assert ref.meta["discharges_from"] == "edition.Distimeclean" and ref.n_units == 2
    np.testing.assert_array_equal(ref.spikes[0], spikes[0][::2])
    np.testing.assert_array_equal(ref.spikes[1], spikes[1])


def test_export_muedit_through_the_cli(otb, tmp_path):
    """``bmiss export DEC --recording REC --out units.mat`` writes MUedit's output, which reads back."""
    from bmiss import api

    p, _, _ = otb
    rec = F.load_any(p)
    ref = R.load_reference(p)
    dec = Decomposition(spikes=ref.spikes, sources=ref.sources, fs=ref.fs, method="x",
                        meta={"recording": api.recording_fingerprint(rec)})
    dpath = tmp_path / "dec.npz"
    save_decomposition(dpath, dec)
    out = tmp_path / "units.mat"
    assert main(["export", str(dpath), "--recording", str(p), "--out", str(out)]) == 0
    back = R.load_reference(out)
    assert back.origin == "MUedit .mat"
    for a, b in zip(back.spikes, ref.spikes):
        np.testing.assert_array_equal(a, b)
    assert main(["export", str(dpath), "--out", str(tmp_path / "x.mat")]) == 2  # needs the recording
