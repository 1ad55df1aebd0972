"""Figures: every function draws its data inside the visible axes (a blank plot fails), writes a
non-empty image atomically, and leaves nothing behind on failure."""
import numpy as np
import pytest
from matplotlib.figure import Figure

from bmiss import figures as F
from bmiss.io import Decomposition, Recording

from plotcheck import visible as _visible

FS = 2048.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rec():
    """3x4 grid without electrode (0, 0) -> 11 channels, 3 units, 2 s."""
    rng = np.random.default_rng(0)
    R, C = 3, 4
    cm = np.array([(r, c) for r in range(R) for c in range(C) if (r, c) != (0, 0)])
    n_ch, T, N = len(cm), 24, int(2 * FS)
    t = np.arange(T)
    base = np.exp(-0.5 * ((t - 8) / 2.0) ** 2) - 0.6 * np.exp(-0.5 * ((t - 13) / 3.0) ** 2)
    muaps = np.zeros((3, n_ch, T))
    for u, amp in enumerate((10.0, 40.0, 25.0)):
        gain = np.exp(-0.5 * (((cm[:, 0] - u) ** 2 + (cm[:, 1] - 1.5) ** 2) / 1.5))
        muaps[u] = amp * gain[:, None] * base[None, :]
    spikes = [np.sort(rng.choice(np.arange(100, N - T), n, replace=False)) for n in (25, 30, 18)]
    emg = rng.normal(0, 1.0, (n_ch, N))
    for u, sp in enumerate(spikes):
        for s in sp:
            emg[:, s:s + T] += muaps[u]
    exc = np.clip(np.arange(N) / N * 2, 0, 1) * 0.5
    return Recording(emg=emg, fs=FS, grid_shape=(R, C), channel_map=cm, true_spikes=spikes,
                     true_muaps=muaps.astype(np.float32), excitation=exc.astype(np.float32),
                     meta={"anatomy": "toy", "snr_db": 20.0})


@pytest.fixture(scope="module")
def dec(rec):
    rng = np.random.default_rng(1)
    s0 = np.delete(rec.true_spikes[1], [2, 7]) + 2          # unit 1, shifted, two missed
    s1 = np.sort(np.concatenate([rec.true_spikes[0], rng.integers(0, rec.n_samples, 3)]))  # 3 false
    s2 = rng.integers(0, rec.n_samples, 10)                 # a false unit
    spikes = [s0, s1, s2]
    return Decomposition(spikes=spikes, sources=np.zeros((3, rec.n_samples), np.float32), fs=FS, method="toy")


def _report_by_hand():
    """The keys of bmiss.metrics.evaluate that decomposition_vs_truth reads."""
    return {
        "method": "toy",
        "summary": {"kind": "roa", "tol": 1, "n_true": 3, "n_est": 3, "n_matched": 2, "found_90": 1,
                    "n_false": 1, "n_duplicates": 0},
        "per_true": [
            {"true": 0, "est": 1, "roa": 0.89, "lag": 0},
            {"true": 1, "est": 0, "roa": 0.93, "lag": -2},
            {"true": 2, "est": -1, "roa": 0.0, "lag": 0},
        ],
    }


def _check_png(path):
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers
    import matplotlib.image

    img = matplotlib.image.imread(path)[..., :3]
    assert img.std() > 0.02  # not one flat colour




def test_visible_catches_a_blank_plot():
    fig = F._new_figure((3, 2))
    ax = fig.add_subplot()
    assert _visible(ax) == []
    ax.plot([0, 1], [0, 1])
    ax.set_ylim(5, 6)  # data outside the view: still blank to a reader
    assert _visible(ax) == []
    ax.set_ylim(0, 1)
    assert len(_visible(ax, min_ptp=0.5)) == 1


# ------------------------------------------------------------------ each function writes a PNG
def test_muap_map(rec, tmp_path):
    p = tmp_path / "muaps.png"
    fig = F.muap_map(rec.true_muaps, rec.channel_map, rec.grid_shape, rec.fs, path=p, title="toy")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3  # 3 units, fewer than the default 4
    _check_png(p)
    for ax in fig.axes:  # one waveform per channel, each with a visible deflection
        assert len([sg for sg in _visible(ax) if len(sg) >= 20 and np.ptp(sg[:, 1]) > 0]) >= rec.n_channels
    # default choice: largest first
    assert fig.axes[0].get_title().startswith("MU 1 ")
    fig = F.muap_map(rec.true_muaps, rec.channel_map, rec.grid_shape, rec.fs, units=[2], same_scale=False)
    assert len(fig.axes) == 1
    with pytest.raises(ValueError):
        F.muap_map(rec.true_muaps, rec.channel_map, rec.grid_shape, rec.fs, units=[5])


def test_muap_map_without_channel_map(rec, tmp_path):
    full = np.zeros((2, 12, 24))
    full[:, :, 10] = 5.0
    p = tmp_path / "m.png"
    F.muap_map(full, None, (3, 4), FS, path=p)
    _check_png(p)


def test_raster(rec, tmp_path):
    p = tmp_path / "raster.png"
    fig = F.raster(rec.true_spikes, rec.fs, rec.excitation, path=p, title="toy")
    _check_png(p)
    assert len(fig.axes) == 2  # raster + excitation twin
    n_spikes = sum(len(s) for s in rec.true_spikes)
    assert len(_visible(fig.axes[0])) == n_spikes  # one tick per discharge, all inside the view
    assert any(len(sg) > 1000 and np.ptp(sg[:, 1]) > 0.4 for sg in _visible(fig.axes[1]))  # the 0..0.5 ramp
    p2 = tmp_path / "raster_rates.png"
    fig = F.raster(rec.true_spikes + [np.array([], np.int64)], rec.fs, None, path=p2, rates=True,
                   n_samples=rec.n_samples)
    _check_png(p2)
    assert len(fig.axes) == 2  # raster + rates


def test_smoothed_rate_constant_train():
    sp = np.arange(1000, 20000, 128)  # 16 Hz at 2048 Hz
    r = F.smoothed_rate(sp, FS, 22000)
    assert np.nanmedian(r) == pytest.approx(16.0)
    assert np.isnan(r[:900]).all() and np.isnan(r[-1000:]).all()


def test_emg_stretch(rec, tmp_path):
    p = tmp_path / "emg.png"
    fig = F.emg_stretch(rec.emg, rec.fs, start_s=0.5, length_s=0.5, path=p)
    _check_png(p)
    traces = [sg for sg in _visible(fig.axes[0]) if len(sg) >= int(0.5 * FS) - 1 and np.ptp(sg[:, 1]) > 0]
    assert len(traces) >= 11  # every channel, the whole half second, not flat
    F.emg_stretch(rec.emg, rec.fs, channels=[3, 1], length_s=5.0)  # clipped at the end
    with pytest.raises(ValueError):
        F.emg_stretch(rec.emg, rec.fs, start_s=10.0)


def test_decomposition_vs_truth(rec, dec, tmp_path):
    p = tmp_path / "dvt.png"
    fig = F.decomposition_vs_truth(dec, rec, _report_by_hand(), path=p)
    _check_png(p)
    drawn = sum(len(s) for s in (rec.true_spikes[0], dec.spikes[1], rec.true_spikes[1], dec.spikes[0]))
    assert len(_visible(fig.axes[0])) >= drawn  # a tick per discharge of both matched pairs
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[:2] == ["true 0", "est 1  RoA 0.89"]
    assert labels[2:] == ["true 1", "est 0  RoA 0.93, lag -2"]


def test_decomposition_vs_truth_with_evaluate(rec, dec, tmp_path):
    from bmiss import metrics  # bmiss's own module: a broken import must fail, not skip
    report = metrics.evaluate(dec, rec)
    p = tmp_path / "dvt2.png"
    fig = F.decomposition_vs_truth(dec, rec, report, path=p)
    _check_png(p)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "true 1" in labels and "true 0" in labels
    # no report: computed internally; nothing matched still draws
    empty = Decomposition(spikes=[np.array([5, 9000])], sources=np.zeros((1, rec.n_samples)), fs=FS, method="x")
    F.decomposition_vs_truth(empty, rec, path=tmp_path / "none.png")
    _check_png(tmp_path / "none.png")


def test_snr_yield(tmp_path):
    p = tmp_path / "snr.png"
    res = {"bmiss": {"20 dB": 12, "10 dB": 5, "30 dB": 15}, "ckc": {"10 dB": 3, "20 dB": 9}}
    fig = F.snr_yield(res, path=p)
    _check_png(p)
    ax = fig.axes[0]
    assert sum(len(sg) for sg in _visible(ax)) >= 5  # 3 + 2 finite points inside the view
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "20", "30"]  # numeric order
    assert np.isnan(ax.get_lines()[1].get_ydata()[2])  # missing value -> gap
    F.snr_yield({"a": {"low": 1, "high": 3}})  # categorical labels


def test_simulation_overview(rec, tmp_path):
    p = tmp_path / "overview.png"
    fig = F.simulation_overview(rec, path=p)
    _check_png(p)
    counts = [len(_visible(ax)) for ax in fig.axes]
    assert counts[0] >= rec.n_channels and sum(len(s) for s in rec.true_spikes) in counts
    assert "toy" in fig._suptitle.get_text()
    bare = Recording(emg=rec.emg, fs=rec.fs)  # no truth, no grid
    F.simulation_overview(bare, path=tmp_path / "bare.png")
    _check_png(tmp_path / "bare.png")


def test_other_formats(rec, tmp_path):
    F.raster(rec.true_spikes, rec.fs, path=tmp_path / "r.pdf")
    assert (tmp_path / "r.pdf").read_bytes()[:4] == b"%PDF"
    F.raster(rec.true_spikes, rec.fs, path=tmp_path / "r.svg")
    assert b"<svg" in (tmp_path / "r.svg").read_bytes()[:500]
    with pytest.raises(ValueError, match="suffix"):
        F.raster(rec.true_spikes, rec.fs, path=tmp_path / "r.notaformat")
    assert not (tmp_path / "r.notaformat").exists()


# ------------------------------------------------------------------ atomic saving
def test_failed_save_leaves_no_file(rec, tmp_path, monkeypatch):
    def broken_savefig(self, fname, *a, **kw):
        with open(fname, "wb") as f:
            f.write(PNG_MAGIC + b"half a picture")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    calls = [
        lambda p: F.muap_map(rec.true_muaps, rec.channel_map, rec.grid_shape, rec.fs, path=p),
        lambda p: F.raster(rec.true_spikes, rec.fs, rec.excitation, path=p),
        lambda p: F.emg_stretch(rec.emg, rec.fs, path=p),
        lambda p: F.decomposition_vs_truth(Decomposition(spikes=rec.true_spikes, sources=None, fs=FS, method="x"),
                                           rec, _report_by_hand(), path=p),
        lambda p: F.snr_yield({"a": {10: 1, 20: 2}}, path=p),
        lambda p: F.simulation_overview(rec, path=p),
    ]
    for k, call in enumerate(calls):
        p = tmp_path / f"fig{k}.png"
        with pytest.raises(OSError, match="disk full"):
            call(p)
        assert not p.exists()
    assert list(tmp_path.iterdir()) == []
    # an existing figure survives a failed overwrite
    good = tmp_path / "keep.png"
    good.write_bytes(b"old")
    with pytest.raises(OSError):
        F.snr_yield({"a": {10: 1}}, path=good)
    assert good.read_bytes() == b"old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["keep.png"]
