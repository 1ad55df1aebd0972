import csv
import gzip
import io
import json
import tarfile

import numpy as np
import pytest

from bmiss import formats as F
from bmiss.io import BmissFileError, Decomposition, Recording, load_recording

FS = 2048.0


@pytest.fixture
def rec():
    rng = np.random.default_rng(0)
    n = 3000
    return Recording(emg=rng.standard_normal((6, n)).astype(np.float32) * 50, fs=FS, ied_mm=8.0,
                     excitation=np.linspace(0, 1, n).astype(np.float32))


@pytest.fixture
def dec(rec):
    rng = np.random.default_rng(1)
    n = rec.n_samples
    spikes = [np.arange(100, n, 200), np.arange(150, n, 170), np.array([5, 2999])]
    src = 0.05 * rng.standard_normal((3, n))
    for j, s in enumerate(spikes):
        src[j, s] += 1.0
    return Decomposition(spikes=spikes, sources=src.astype(np.float32), fs=FS, method="test",
                         sil=np.array([0.95, 0.9, np.nan], np.float32),
                         params=np.array([[10.0, 4.0], [12.0, 3.5], [15.0, 4.2]], np.float32),
                         param_std=np.array([[0.5, 0.1], [0.4, 0.1], [1.0, 0.3]], np.float32),
                         param_names=("depth_mm", "cv_m_s"))


# ------------------------------------------------------------------ openhdemg JSON
def test_openhdemg_structure(tmp_path, rec, dec):
    pd = pytest.importorskip("pandas")
    p = F.save_openhdemg(tmp_path / "x.json", dec, rec)
    raw = p.read_bytes()
    assert raw[:2] == b"\x1f\x8b"  # gzip
    d = json.loads(gzip.decompress(raw).decode("utf-8"))
    assert set(d) == {"SOURCE", "FILENAME", "RAW_SIGNAL", "REF_SIGNAL", "ACCURACY", "IPTS", "MUPULSES", "FSAMP",
                      "IED", "EMG_LENGTH", "NUMBER_OF_MUS", "BINARY_MUS_FIRING", "EXTRAS"}
    assert all(isinstance(v, str) for v in d.values())  # every item is a JSON string, as openhdemg writes
    assert json.loads(d["SOURCE"]) == "CUSTOMCSV"
    assert json.loads(d["FILENAME"]) == "x.json"
    assert json.loads(d["FSAMP"]) == FS and json.loads(d["IED"]) == 8.0
    assert json.loads(d["EMG_LENGTH"]) == rec.n_samples and json.loads(d["NUMBER_OF_MUS"]) == 3
    pulses = json.loads(d["MUPULSES"])
    assert [np.asarray(x).tolist() for x in pulses] == [s.tolist() for s in dec.spikes]

    def df(key):
        return pd.read_json(io.StringIO(d[key]), orient="split")

    raws = df("RAW_SIGNAL")
    assert raws.shape == (rec.n_samples, rec.n_channels)
    np.testing.assert_allclose(raws.to_numpy(), rec.emg.T, rtol=1e-6)
    ref = df("REF_SIGNAL")
    assert ref.shape == (rec.n_samples, 1) and ref.to_numpy()[-1, 0] == pytest.approx(100.0)
    acc = df("ACCURACY")
    assert acc.shape == (3, 1) and acc.iloc[0, 0] == pytest.approx(0.95) and np.isnan(acc.iloc[2, 0])
    ipts = df("IPTS")
    assert ipts.shape == (rec.n_samples, 3)
    np.testing.assert_allclose(ipts.to_numpy(), dec.sources.T, rtol=1e-6)
    b = df("BINARY_MUS_FIRING")
    assert b.shape == (rec.n_samples, 3) and b.to_numpy().sum() == sum(len(s) for s in dec.spikes)
    assert list(np.flatnonzero(b[1].to_numpy())) == dec.spikes[1].tolist()
    ex = df("EXTRAS")
    assert ex.shape[0] == 0


def test_openhdemg_round_trip(tmp_path, rec, dec):
    p = F.save_openhdemg(tmp_path / "x.json", dec, rec, ied_mm=4.0)
    r2 = F.load_openhdemg(p)
    np.testing.assert_allclose(r2.emg, rec.emg, rtol=1e-6)
    assert r2.fs == FS and r2.ied_mm == 4.0
    np.testing.assert_allclose(r2.excitation, rec.excitation, atol=1e-6)
    assert r2.meta["openhdemg"]["n_mus"] == 3
    # through the generic loaders
    assert load_recording(p).n_channels == 6 and F.load_any(p).n_samples == rec.n_samples
    d2 = F.load_openhdemg_decomposition(p)
    assert [s.tolist() for s in d2.spikes] == [s.tolist() for s in dec.spikes]
    np.testing.assert_allclose(d2.sources, dec.sources, rtol=1e-6)
    assert d2.sil[0] == pytest.approx(0.95) and np.isnan(d2.sil[2])


def test_openhdemg_no_mus_and_unknown_ied(tmp_path):
    rng = np.random.default_rng(2)
    r = Recording(emg=rng.standard_normal((4, 2000)), fs=FS)
    p = F.save_openhdemg(tmp_path / "e.json.gz", None, r)
    r2 = F.load_any(p)
    assert r2.ied_mm is None and r2.excitation is not None and np.all(r2.excitation == 0)
    assert F.load_openhdemg_decomposition(p).n_units == 0


# ------------------------------------------------------------------ tables
def test_events_tsv(tmp_path, dec):
    p = F.save_events_tsv(tmp_path / "sub-01_events.tsv", dec)
    rows = list(csv.DictReader(open(p), delimiter="\t"))
    assert list(rows[0]) == ["onset", "duration", "unit", "sample"]
    assert len(rows) == sum(len(s) for s in dec.spikes)
    assert rows[0] == {"onset": f"{5 / FS:.6f}", "duration": "0", "unit": "2", "sample": "5"}
    onsets = [float(r["onset"]) for r in rows]
    assert onsets == sorted(onsets)
    assert all(float(r["onset"]) == pytest.approx(int(r["sample"]) / FS, abs=1e-6) for r in rows)


def test_summary_csv(tmp_path, dec):
    p = F.save_summary_csv(tmp_path / "s.csv", dec)
    rows = list(csv.DictReader(open(p)))
    assert list(rows[0]) == ["unit", "n_spikes", "rate_hz", "cov_isi", "sil", "pnr_db",
                             "depth_mm", "depth_mm_std", "cv_m_s", "cv_m_s_std"]
    assert len(rows) == 3
    assert rows[0]["unit"] == "0" and int(rows[0]["n_spikes"]) == len(dec.spikes[0])
    assert float(rows[0]["rate_hz"]) == pytest.approx(FS / 200)
    assert float(rows[0]["sil"]) == pytest.approx(0.95, abs=1e-6)  # stored value wins
    assert float(rows[0]["cov_isi"]) == pytest.approx(0.0)
    assert float(rows[1]["depth_mm"]) == 12.0 and float(rows[2]["cv_m_s_std"]) == pytest.approx(0.3)
    assert rows[2]["cov_isi"] == "n/a"  # 2 spikes -> 1 ISI


# ------------------------------------------------------------------ OTB+
def _write_otbplus(path, raw_int16, fs=2048, gain=150.0, n_emg=64, extra_xml=True):
    """Test-only writer: a plausible OTB+ archive (tar of XML + interleaved int16 .sig)."""
    n_tot = raw_int16.shape[0]
    emg_ch = "\n".join(
        f'<Channel ID="HD08MM1305" Index="{i}" Gain="1" Prefix="MULTIPLE IN 1" Description="ch{i}"/>'
        for i in range(n_emg))
    ctl = "\n".join(f'<Channel ID="{cid}" Index="{i}" Gain="1"/>'
                    for i, cid in enumerate(["BufferChannel", "RampChannel"][: n_tot - n_emg]))
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<Device Name="QUATTROCENTO" SampleFrequency="{fs}" DeviceTotalChannels="{n_tot}" ad_bits="16">
  <Channels>
    <Adapter ID="AdapterQuattrocento" Gain="{gain}" ChannelStartIndex="0" HighPassFilter="10" LowPassFilter="500">
{emg_ch}
    </Adapter>
    <Adapter ID="AdapterControl" Gain="1" ChannelStartIndex="{n_emg}">
{ctl}
    </Adapter>
  </Channels>
</Device>"""
    members = {"8f3c2a.sig": raw_int16.T.astype("<i2").tobytes(), "8f3c2a.xml": xml.encode()}
    if extra_xml:
        members["patient.xml"] = b"<patient><name>x</name></patient>"
        members["abstract.xml"] = b"<Abstract/>"
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def test_otbplus_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    n = 2048
    raw = rng.integers(-3000, 3000, (66, n)).astype(np.int16)
    p = _write_otbplus(tmp_path / "rec.otb+", raw)
    r = F.load_any(p)
    assert r.n_channels == 64 and r.n_samples == n and r.fs == 2048.0
    expected = raw[:64].astype(np.float64) * 5.0 / 2**16 / 150.0 * 1e6  # µV
    np.testing.assert_allclose(r.emg, expected, rtol=1e-6)
    assert r.ied_mm == 8.0 and r.meta["otb"]["grid_rows_cols"] == [13, 5]
    r33 = F.load_otbplus(p, adc_range_v=3.3)
    np.testing.assert_allclose(r33.emg, expected * 3.3 / 5.0, rtol=1e-6)
    assert F.load_otbplus(p, emg_only=False).n_channels == 66
    assert load_recording(p).n_channels == 64


def test_otbplus_errors(tmp_path):
    bad = tmp_path / "bad.otb+"
    bad.write_bytes(b"not a tar")
    with pytest.raises(BmissFileError, match="tar"):
        F.load_any(bad)
    empty = tmp_path / "empty.otb+"
    with tarfile.open(empty, "w") as tf:
        ti = tarfile.TarInfo("a.xml")
        ti.size = 8
        tf.addfile(ti, io.BytesIO(b"<Device/"))
    with pytest.raises(BmissFileError, match=r"\.sig"):
        F.load_any(empty)


# ------------------------------------------------------------------ .mat
def test_mat_round_trip(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(4)
    n = 2500
    emg_mv = rng.standard_normal((n, 8)) * 0.05
    extra = rng.standard_normal((n, 2))
    desc = np.array([f"HD08MM1305 ch{i}" for i in range(8)] + ["Source for decomposition 1", "acquired data"],
                    dtype=object)
    p = tmp_path / "otb.mat"
    savemat(p, {"Data": np.hstack([emg_mv, extra]), "SamplingFrequency": 2048.0, "Description": desc})
    r = F.load_any(p)
    assert r.n_channels == 8 and r.n_samples == n and r.fs == 2048.0
    np.testing.assert_allclose(r.emg, emg_mv.T * 1000.0, rtol=1e-5)  # mV -> µV
    assert r.meta["dropped_columns"] == ["Source for decomposition 1", "acquired data"]
    # no Description, already [channels, samples], already µV
    p2 = tmp_path / "plain.mat"
    savemat(p2, {"Data": emg_mv.T, "SamplingFrequency": 4096})
    r2 = F.load_mat(p2, to_uv=1.0)
    assert r2.emg.shape == (8, n) and r2.fs == 4096.0
    np.testing.assert_allclose(r2.emg, emg_mv.T, rtol=1e-5)
    p3 = tmp_path / "nodata.mat"
    savemat(p3, {"X": np.zeros(3)})
    with pytest.raises(BmissFileError, match="Data"):
        F.load_any(p3)


# ------------------------------------------------------------------ dispatch errors
def test_unknown_suffix_and_missing(tmp_path):
    p = tmp_path / "x.edf"
    p.write_bytes(b"0")
    with pytest.raises(BmissFileError, match=r"\.otb\+.*\.mat.*\.json"):
        F.load_any(p)
    q = tmp_path / "x.otb4"
    q.write_bytes(b"0")
    with pytest.raises(BmissFileError, match="otb4"):
        load_recording(q)
    with pytest.raises(FileNotFoundError):
        F.load_any(tmp_path / "missing.otb+")
    with pytest.raises(FileNotFoundError):
        load_recording(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BmissFileError, match="openhdemg"):
        F.load_any(bad)
