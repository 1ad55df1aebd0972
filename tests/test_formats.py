import csv
from dataclasses import replace
import gzip
import io
import json
import tarfile

from pathlib import Path

import numpy as np
import pytest

from bmiss import electrodes as E
from bmiss import formats as F
from bmiss.io import BmissFileError, Decomposition, Recording, load_recording

FS = 2048.0
REAL = Path(__file__).resolve().parents[2] / "shared" / "data"


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
    # a simulation's drive goes out as REF_SIGNAL in % of max and comes back as the reference signal
    np.testing.assert_allclose(r2.ref_signal, rec.excitation * 100, atol=1e-4)
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
    assert r2.ied_mm is None and r2.ref_signal is not None and np.all(r2.ref_signal == 0)
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
    quality = [{"rate_hz": FS / 200, "cov_isi": 0.0, "sil": 0.5, "pnr_db": 20.0},
               {"rate_hz": FS / 170, "cov_isi": 0.0, "sil": 0.5, "pnr_db": 21.0},
               {"rate_hz": 1.0, "cov_isi": None, "sil": 0.5, "pnr_db": 5.0}]
    p = F.save_summary_csv(tmp_path / "s.csv", dec, quality)
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
    assert rows[2]["sil"] == "0.5"  # no stored value (NaN) -> the caller's
    # without quality the writer computes nothing: only counts and stored values
    rows = list(csv.DictReader(open(F.save_summary_csv(tmp_path / "t.csv", dec))))
    assert rows[0]["rate_hz"] == "n/a" and float(rows[0]["sil"]) == pytest.approx(0.95) and rows[2]["sil"] == "n/a"
    # the intervals' bounds follow each property's std, in the order lo95, lo68, hi68, hi95
    iv = np.full((3, 2, 4), np.nan, np.float32)
    iv[1, 0] = (10.0, 11.0, 13.0, 14.0)
    rows = list(csv.DictReader(open(F.save_summary_csv(tmp_path / "u.csv", replace(dec, param_interval=iv)))))
    assert list(rows[0])[6:] == ["depth_mm", "depth_mm_std", "depth_mm_lo95", "depth_mm_lo68", "depth_mm_hi68",
                                 "depth_mm_hi95", "cv_m_s", "cv_m_s_std", "cv_m_s_lo95", "cv_m_s_lo68",
                                 "cv_m_s_hi68", "cv_m_s_hi95"]
    assert [float(rows[1][f"depth_mm_{b}"]) for b in F.INTERVAL_BOUNDS] == [10.0, 11.0, 13.0, 14.0]
    assert rows[0]["cv_m_s_hi95"] == "n/a"


def test_writers_do_not_import_metrics():
    import inspect

    src = inspect.getsource(F)
    for imp in ("from . import metrics", "from .metrics", "from .quality", "from . import quality"):
        assert imp not in src  # writers take precomputed quality values


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
    assert r.meta["dropped_columns"] == ["Source for decomposition 1"]
    np.testing.assert_allclose(r.ref_signal, extra[:, 1], rtol=1e-5)  # 'acquired data' is the reference
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
    p = tmp_path / "x.xdf"
    p.write_bytes(b"0")
    with pytest.raises(BmissFileError, match=r"\.otb\+.*\.mat.*\.json.*\.bdf"):
        F.load_any(p)
    e = tmp_path / "x.edf"  # an EDF that is not one: refused in one line naming the file
    e.write_bytes(b"0")
    with pytest.raises(BmissFileError, match="x.edf: not a readable EDF/BDF file"):
        F.load_any(e)
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


# ------------------------------------------------------------------ OTBioLab+ .mat, real labels
def _otb_label(i, code="GR08MM1305", unit="uV"):
    return f"Vastus Lateralis - AUX 3 (Channel {i + 1}->{i + 1}) - {code} ({i + 1})[{unit}]"


def test_mat_otbiolab_labels(tmp_path):
    """EMG labels contain 'AUX 3' (the input's name): they are still EMG; units from the labels."""
    from scipy.io import savemat

    rng = np.random.default_rng(5)
    n = 3000
    emg_uv = rng.standard_normal((n, 64)) * 20
    force = np.linspace(0, 30, n)
    dec_col = rng.standard_normal(n)
    desc = np.array([_otb_label(i) for i in range(64)]
                    + ["acquired data[ %(MVC)]", "performed path[ %(MVC)]", "Decomposition of Vastus (1)"],
                    dtype=object)
    p = tmp_path / "export.mat"
    savemat(p, {"Data": np.hstack([emg_uv, force[:, None], force[:, None], dec_col[:, None]]),
                "SamplingFrequency": 2048.0, "Description": desc})
    r = F.load_any(p)
    assert r.n_channels == 64 and r.fs == 2048.0
    np.testing.assert_allclose(r.emg, emg_uv.T, rtol=1e-5)  # [uV] labels: no x1000
    np.testing.assert_allclose(r.ref_signal, force, rtol=1e-5)
    assert r.meta["ref_unit"] == "%(MVC)" and r.meta["units"] == "from labels"
    assert r.meta["dropped_columns"] == ["performed path[ %(MVC)]", "Decomposition of Vastus (1)"]
    assert r.electrode == "GR08MM1305" and r.orientation == 180 and r.ied_mm == 8.0
    np.testing.assert_array_equal(r.channel_map, E.load_layout("GR08MM1305", 180).channel_map)
    r0 = F.load_mat(p, orientation=0)
    np.testing.assert_array_equal(r0.channel_map, E.load_layout("GR08MM1305", 0).channel_map)
    # mV labels are scaled; a force AUX channel is kept as the reference when no 'acquired data'
    desc2 = np.array([_otb_label(i, unit="mV") for i in range(64)] + ["Force - AUX 1 - AUX  Force[N]"], dtype=object)
    p2 = tmp_path / "mv.mat"
    savemat(p2, {"Data": np.hstack([emg_uv / 1000, force[:, None]]), "SamplingFrequency": 2048, "Description": desc2})
    r2 = F.load_any(p2)
    np.testing.assert_allclose(r2.emg, emg_uv.T, rtol=1e-4)
    np.testing.assert_allclose(r2.ref_signal, force, rtol=1e-5)
    assert r2.meta["ref_unit"] == "N"


@pytest.mark.parametrize("fs,msg", [(np.zeros(0), "empty"), (np.array([2048.0, 4096.0]), "shape"),
                                    (-1.0, "positive")])
def test_mat_bad_fs(tmp_path, fs, msg):
    from scipy.io import savemat

    p = tmp_path / "f.mat"
    savemat(p, {"Data": np.zeros((3000, 4)), "SamplingFrequency": fs})
    with pytest.raises(BmissFileError, match=msg) as e:
        F.load_any(p)
    assert str(p) in str(e.value)


def test_mat_without_fs_and_complex(tmp_path):
    from scipy.io import savemat

    p = tmp_path / "bare.mat"
    savemat(p, {"emg": np.ones((3000, 4))})
    with pytest.raises(BmissFileError, match="--fs"):
        F.load_any(p)
    r = load_recording(p, fs=4096, electrode=None)
    assert r.fs == 4096 and r.n_channels == 4
    c = tmp_path / "c.mat"
    savemat(c, {"Data": np.ones((3000, 4)) * (1 + 1j), "SamplingFrequency": 2048})
    with pytest.raises(BmissFileError, match="complex"):
        F.load_any(c)
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    with pytest.raises(BmissFileError, match=str(junk.name)):
        F.load_any(junk)


def test_real_gr10mm0808_recording():
    """The real 64-channel GR10MM0808 recording (10,240 Hz, no fs in the file) through the reader."""
    path = REAL / "scd_example_gr10mm0808_10240hz.mat"
    if not REAL.is_dir():
        pytest.skip(f"real-data folder {REAL} is absent (see shared/data/README.md)")
    with pytest.raises(BmissFileError, match="no 'SamplingFrequency'"):
        load_recording(path)
    r = load_recording(path, fs=10240, electrode="GR10MM0808")
    assert r.emg.shape == (64, 102401) and r.fs == 10240.0 and r.duration_s == pytest.approx(10.0, abs=1e-3)
    assert r.electrode == "GR10MM0808" and r.orientation == 180 and r.ied_mm == 10.0 and r.grid_shape == (8, 8)
    np.testing.assert_array_equal(r.channel_map[:8], [[7 - k, 0] for k in range(8)])  # channel 1 bottom-left, up
    np.testing.assert_array_equal(r.channel_map[8], [7, 1])
    assert np.isfinite(r.emg).all() and 10 < float(np.median(r.emg.std(1))) < 1000  # µV (mV x 1000)
    from bmiss.geometry import anatomy_for_recording

    a = anatomy_for_recording(r, "tibialis_anterior")
    assert a.grid.fs_hz == 10240.0 and a.grid.channel_order == tuple(map(tuple, r.channel_map.tolist()))
    # The pinout makes a spatially coherent grid: channels it calls neighbours (10 mm apart) are
    # far more alike than distant ones, and than "neighbours" under scrambled channel orders.
    from scipy.signal import butter, sosfiltfilt

    x = sosfiltfilt(butter(2, [20, 500], "bandpass", fs=r.fs, output="sos"), r.emg[:, :20480].astype(np.float64), axis=1)
    x -= x.mean(0)  # the common mode would make every pair alike
    C = np.corrcoef(x)
    iu = np.triu_indices(64, 1)

    def nb_far(cm):
        d = np.abs(cm[:, None, :] - cm[None, :, :]).sum(-1)[iu]
        return C[iu][d == 1].mean(), C[iu][d >= 4].mean()

    nb, far = nb_far(r.channel_map)
    rng = np.random.default_rng(0)
    scrambled = max(nb_far(r.channel_map[rng.permutation(64)])[0] for _ in range(5))
    assert nb > far + 0.2 and nb > scrambled + 0.2, (nb, far, scrambled)


# ------------------------------------------------------------------ OTB+ with a known pinout
def _otb_archive(path, sig_bytes, xml, mode="w"):
    with tarfile.open(path, mode) as tf:
        for name, data in (("rec.sig", sig_bytes), ("rec.xml", xml.encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def _pinout_xml(code, n_tot, index_order):
    ch = "\n".join(f'<Channel ID="{code}" Index="{i}" Gain="1"/>' for i in index_order)
    return (f'<Device Name="QUATTROCENTO" SampleFrequency="2048" DeviceTotalChannels="{n_tot}" ad_bits="16">'
            f'<Channels><Adapter ID="AdapterQuattrocento" Gain="1" ChannelStartIndex="0">{ch}</Adapter>'
            f'<Adapter ID="AdapterControl" Gain="1" ChannelStartIndex="64"><Channel ID="BufferChannel" Index="0"/>'
            '</Adapter></Channels></Device>')


@pytest.mark.parametrize("orientation", [180, 0])
def test_otbplus_known_pinout(tmp_path, orientation):
    """Hand-made archive: .sig channel k carries the constant 100*(k+1); its grid channel is k+1."""
    n = 512
    raw = np.zeros((n, 65), "<i2")
    raw[:, :64] = 100 * np.arange(1, 65)
    p = _otb_archive(tmp_path / "k.otb+", raw.tobytes(), _pinout_xml("GR08MM1305", 65, range(64)))
    r = F.load_otbplus(p, orientation=orientation, adc_range_v=2.0 ** 16 / 1e6)  # 1 count = 1 µV
    from test_electrodes import GR08MM1305_0, GR08MM1305_180

    table = np.array(GR08MM1305_180 if orientation == 180 else GR08MM1305_0)
    assert r.n_channels == 64 and r.electrode == "GR08MM1305" and r.orientation == orientation
    for k in range(64):
        number = int(round(r.emg[k, 0] / 100))  # which grid channel this row carries
        assert tuple(r.channel_map[k]) == tuple(np.argwhere(table == number)[0])


def test_otbplus_bomb_and_truncation(tmp_path):
    class Zeros(io.RawIOBase):  # 80 MB of zeros, streamed: never in memory at once
        def __init__(self, n):
            self.left = n

        def readable(self):
            return True

        def readinto(self, b):
            k = min(len(b), self.left)
            b[:k] = bytes(k)
            self.left -= k
            return k

    bomb = tmp_path / "bomb.otb+"
    size = 80 << 20
    with tarfile.open(bomb, "w:gz", compresslevel=1) as tf:
        ti = tarfile.TarInfo("rec.sig")
        ti.size = size
        tf.addfile(ti, io.BufferedReader(Zeros(size)))
        x = _pinout_xml("GR08MM1305", 65, range(64)).encode()
        ti = tarfile.TarInfo("rec.xml")
        ti.size = len(x)
        tf.addfile(ti, io.BytesIO(x))
    assert bomb.stat().st_size < size / 200
    with pytest.raises(BmissFileError, match="decompression bomb"):
        F.load_otbplus(bomb)
    with pytest.raises(BmissFileError, match="over the"):
        F.load_otbplus(bomb, max_member_bytes=1 << 20)
    raw = np.ones((2048, 65), "<i2")
    good = _otb_archive(tmp_path / "good.otb+", raw.tobytes(), _pinout_xml("GR08MM1305", 65, range(64)))
    cut = tmp_path / "cut.otb+"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(BmissFileError, match="cut.otb"):
        F.load_otbplus(cut)


# ------------------------------------------------------------------ openhdemg hardening / layout
def test_openhdemg_corrupt_gzip_and_header(tmp_path, rec, dec):
    p = F.save_openhdemg(tmp_path / "x.json", dec, rec)
    raw = p.read_bytes()
    flg = raw[3]
    name = raw[10:raw.index(b"\0", 10)] if flg & 0x08 else b""
    assert b".tmp" not in name and b"x.json" in name or name == b""
    assert raw[4:8] == b"\0\0\0\0"  # no time stamp
    bad = tmp_path / "bad.json"
    bad.write_bytes(raw[:10] + bytes(range(256)) * 4)
    with pytest.raises(BmissFileError, match="bad.json"):
        F.load_openhdemg(bad)
    short = tmp_path / "short.json.gz"
    short.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BmissFileError, match="short.json.gz"):
        F.load_any(short)


def test_openhdemg_layout_and_ref_signal(tmp_path):
    rng = np.random.default_rng(7)
    n = 2500
    r = Recording(emg=rng.standard_normal((64, n)) * 30, fs=FS, electrode="GR08MM1305", orientation=0,
                  ref_signal=np.linspace(0, 40, n), meta={"ref_unit": "%MVC"})
    p = F.save_openhdemg(tmp_path / "l.json", None, r)
    d = json.loads(gzip.decompress(p.read_bytes()))
    ex = json.loads(d["EXTRAS"])
    assert ex["columns"] == ["electrode", "orientation", "ref_unit"] and ex["data"] == [["GR08MM1305", 0, "%MVC"]]
    ref = json.loads(d["REF_SIGNAL"])["data"]
    assert ref[-1][0] == pytest.approx(40.0)  # the recorded reference, not zeros
    r2 = F.load_openhdemg(p)
    assert r2.electrode == "GR08MM1305" and r2.orientation == 0 and r2.ied_mm == 8.0
    np.testing.assert_array_equal(r2.channel_map, r.channel_map)
    np.testing.assert_allclose(r2.ref_signal, r.ref_signal, rtol=1e-6)


# ------------------------------------------------------------------ the command line on real-style exports
def test_cli_decomposes_exports_without_flags(tmp_path, capsys):
    """An OTBioLab+ .mat and an OTB+ file that name their grid need no geometry flags; a bare file
    sent to bmiss is refused with the flags named."""
    from scipy.io import savemat

    from bmiss.cli import main
    from bmiss.io import load_decomposition

    import exports

    rng = np.random.default_rng(9)
    n = 4096
    # issue 18: the 75-column OTBioLab+ export (numbered decomposition/source columns, [a.u], % MVC)
    mat, _, _ = exports.otbiolab_mat(tmp_path / "export.mat", n_samples=n)
    raw = rng.integers(-2000, 2000, (n, 65)).astype("<i2")
    otb = _otb_archive(tmp_path / "rec.otb+", raw.tobytes(), _pinout_xml("GR08MM1305", 65, range(64)))
    for src in (mat, otb):
        out = tmp_path / (src.stem + "_cbss.npz")
        assert main(["decompose", str(src), "--method", "cbss", "--n-iter", "2", "--quiet", "--out", str(out)]) == 0
        lay = load_decomposition(out).meta["layout"]
        assert lay["electrode"] == "GR08MM1305" and lay["orientation"] == 180 and lay["ied_mm"] == 8.0
        assert lay["channel_map"] == E.load_layout("GR08MM1305").channel_map.tolist()
    # and its decomposition is compared with OTBioLab's own 5 units
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "export_cbss.npz"), "--reference", str(mat)]) == 0
    assert "5 units at 2048 Hz" in capsys.readouterr().out
    bare = tmp_path / "bare.npz"
    np.savez(bare, emg=rng.standard_normal((64, n)).astype(np.float32), fs=FS)
    capsys.readouterr()
    assert main(["decompose", str(bare), "--method", "bmiss", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--electrode CODE" in err[0] and "--grid ROWSxCOLS --ied MM" in err[0]
