"""Electrode layouts: pinouts against hand-written tables, custom maps, and the forward model
placing every amplifier channel at its electrode."""
import json

import numpy as np
import pytest

from bmiss import anatomy, electrodes as E
from bmiss.geometry import anatomy_for_recording
from bmiss.io import Recording

# Hand-written from the pinout drawings (1-based amplifier channel, 0 = no electrode), rows top to
# bottom, as /work/shared/reference.md s6 and openhdemg's sort_rawemg docstring draw them.
GR08MM1305_180 = [
    [0, 25, 26, 51, 52],
    [1, 24, 27, 50, 53],
    [2, 23, 28, 49, 54],
    [3, 22, 29, 48, 55],
    [4, 21, 30, 47, 56],
    [5, 20, 31, 46, 57],
    [6, 19, 32, 45, 58],
    [7, 18, 33, 44, 59],
    [8, 17, 34, 43, 60],
    [9, 16, 35, 42, 61],
    [10, 15, 36, 41, 62],
    [11, 14, 37, 40, 63],
    [12, 13, 38, 39, 64],
]
GR08MM1305_0 = [
    [64, 39, 38, 13, 12],
    [63, 40, 37, 14, 11],
    [62, 41, 36, 15, 10],
    [61, 42, 35, 16, 9],
    [60, 43, 34, 17, 8],
    [59, 44, 33, 18, 7],
    [58, 45, 32, 19, 6],
    [57, 46, 31, 20, 5],
    [56, 47, 30, 21, 4],
    [55, 48, 29, 22, 3],
    [54, 49, 28, 23, 2],
    [53, 50, 27, 24, 1],
    [52, 51, 26, 25, 0],
]
GR10MM0808_180 = [
    [8, 16, 24, 32, 40, 48, 56, 64],
    [7, 15, 23, 31, 39, 47, 55, 63],
    [6, 14, 22, 30, 38, 46, 54, 62],
    [5, 13, 21, 29, 37, 45, 53, 61],
    [4, 12, 20, 28, 36, 44, 52, 60],
    [3, 11, 19, 27, 35, 43, 51, 59],
    [2, 10, 18, 26, 34, 42, 50, 58],
    [1, 9, 17, 25, 33, 41, 49, 57],
]
GR10MM0808_0 = [
    [57, 49, 41, 33, 25, 17, 9, 1],
    [58, 50, 42, 34, 26, 18, 10, 2],
    [59, 51, 43, 35, 27, 19, 11, 3],
    [60, 52, 44, 36, 28, 20, 12, 4],
    [61, 53, 45, 37, 29, 21, 13, 5],
    [62, 54, 46, 38, 30, 22, 14, 6],
    [63, 55, 47, 39, 31, 23, 15, 7],
    [64, 56, 48, 40, 32, 24, 16, 8],
]


@pytest.mark.parametrize("code,orientation,table", [
    ("GR08MM1305", 180, GR08MM1305_180), ("GR08MM1305", 0, GR08MM1305_0),
    ("GR04MM1305", 180, GR08MM1305_180), ("GR04MM1305", 0, GR08MM1305_0),
    ("GR10MM0808", 180, GR10MM0808_180), ("GR10MM0808", 0, GR10MM0808_0),
])
def test_pinout_matches_hand_table(code, orientation, table):
    lay = E.load_layout(code, orientation)
    t = np.array(table)
    assert lay.grid_shape == t.shape and lay.n_channels == 64
    for k in range(64):  # amplifier channel k (0-based) sits where the drawing shows k+1
        r, c = np.argwhere(t == k + 1)[0]
        assert tuple(lay.channel_map[k]) == (r, c), f"{code}@{orientation}: channel {k + 1}"
    assert list(lay.missing) == [tuple(x) for x in np.argwhere(t == 0)]
    np.testing.assert_array_equal(lay.table() + 1, t)


def test_default_orientation_is_180():
    np.testing.assert_array_equal(E.load_layout("gr08mm1305").channel_map,
                                  E.load_layout("GR08MM1305", 180).channel_map)


@pytest.mark.parametrize("code", E.CODES)
def test_every_registered_grid(code):
    a, b = E.load_layout(code, 180), E.load_layout(code, 0)
    n = {"0804": 32}.get(code[-4:], 64)
    assert a.n_channels == n == b.n_channels
    assert a.rows * a.cols - len(a.missing) == n
    # orientation 0 is the same grid turned by 180 degrees
    np.testing.assert_array_equal(b.channel_map, [(a.rows - 1 - r, a.cols - 1 - c) for r, c in a.channel_map])
    assert a.ied_mm == float(code[2:4]) and a.electrode_diameter_mm > 0 and a.source
    assert len({tuple(p) for p in a.channel_map.tolist()}) == n


def test_positions_mm():
    lay = E.load_layout("GR08MM1305")
    xz = lay.positions_mm()
    assert xz.shape == (64, 2)
    # channel 1 (index 0) is row 1, col 0: left column, one IED below the top
    np.testing.assert_allclose(xz[0], [-2 * 8.0, (1 - 6) * 8.0])
    d = np.linalg.norm(xz[1] - xz[0])
    assert d == pytest.approx(8.0)  # channels 1 and 2 are neighbours down the column


def test_row_major_and_parsers():
    lay = E.row_major(13, 5, 8.0, E.parse_missing("0,0"))
    assert lay.n_channels == 64 and lay.missing == ((0, 0),) and tuple(lay.channel_map[0]) == (0, 1)
    assert E.parse_grid("13x5") == (13, 5) and E.parse_missing("0,0; 12,4") == ((0, 0), (12, 4))
    for bad in ("-8x-8", "0x0", "13*5", "x5", "13x"):
        with pytest.raises(E.LayoutError, match="ROWSxCOLS|1..256"):
            E.parse_grid(bad)
    with pytest.raises(E.LayoutError, match="r,c"):
        E.parse_missing("0;0")
    with pytest.raises(E.LayoutError, match="inter-electrode distance"):
        E.row_major(8, 8, 0.0)
    with pytest.raises(E.LayoutError, match="outside"):
        E.row_major(8, 8, 10.0, [(8, 0)])


def test_unknown_code_suggests():
    with pytest.raises(E.LayoutError, match="did you mean GR08MM1305"):
        E.load_layout("GR08MM1350")
    with pytest.raises(E.LayoutError, match="0 or 180"):
        E.load_layout("GR08MM1305", 90)
    assert E.find_code("Vastus Lateralis - AUX 3 (Channel 1->1) - GR08MM1305 (12)[uV]") == "GR08MM1305"
    assert E.find_code("AUX  Force") is None


def test_custom_channel_maps(tmp_path):
    ref = E.load_layout("GR10MM0808", 0)
    p = E.save_channel_map(tmp_path / "m.json", ref)
    lay = E.load_layout(str(p))
    np.testing.assert_array_equal(lay.channel_map, ref.channel_map)
    assert lay.ied_mm == 10.0 and lay.grid_shape == (8, 8)
    csv = tmp_path / "m.csv"
    csv.write_text("# ied_mm = 5\nchannel,row,col\n1,0,0\n0,0,1\n2,1,1\n")
    lay = E.load_layout(f"custom:{csv}")
    assert lay.ied_mm == 5.0 and lay.channel_map.tolist() == [[0, 1], [0, 0], [1, 1]] and lay.missing == ((1, 0),)
    nied = tmp_path / "n.csv"
    nied.write_text("channel,row,col\n0,0,0\n1,0,1\n")
    with pytest.raises(E.LayoutError, match="--ied"):
        E.load_layout(nied)
    assert E.load_layout(nied, ied_mm=4).ied_mm == 4.0
    dup = tmp_path / "d.json"
    dup.write_text(json.dumps({"ied_mm": 8, "channel_map": [[0, 0], [0, 0]]}))
    with pytest.raises(E.LayoutError, match="two channels"):
        E.load_layout(dup)


def _rec(n_ch=64, **kw):
    rng = np.random.default_rng(0)
    return Recording(emg=rng.standard_normal((n_ch, 3000)).astype(np.float32), fs=2048.0, **kw)


def test_anatomy_for_recording_places_channels():
    lay = E.load_layout("GR08MM1305", 180)
    rec = _rec(electrode="GR08MM1305")
    assert rec.orientation == 180 and rec.ied_mm == 8.0
    np.testing.assert_array_equal(rec.channel_map, lay.channel_map)
    a = anatomy_for_recording(rec, "biceps_brachii")
    xz, rc = a.grid.electrode_positions()
    np.testing.assert_array_equal(rc, lay.channel_map)  # forward-model channel k = amplifier channel k
    np.testing.assert_allclose(xz, lay.positions_mm() + [a.grid.centre_x_mm, a.grid.centre_z_mm], atol=1e-9)
    from bmiss.conductor import Conductor

    cond = Conductor.from_anatomy(a)
    np.testing.assert_allclose(np.c_[np.asarray(cond.ex), np.asarray(cond.ez)], xz, atol=1e-5)
    M, _ = a.grid.montage_matrix()
    np.testing.assert_array_equal(M, np.eye(64))
    meta = E.layout_meta(rec)
    assert meta["electrode"] == "GR08MM1305" and meta["orientation"] == 180 and meta["ied_mm"] == 8.0
    assert meta["channel_map"] == lay.channel_map.tolist()


def test_anatomy_for_recording_flags_and_errors():
    bare = _rec()
    with pytest.raises(E.GeometryError, match="--electrode CODE.*--grid ROWSxCOLS --ied MM"):
        anatomy_for_recording(bare)
    a = anatomy_for_recording(bare, electrode="GR08MM1305", orientation=0)
    assert a.grid.electrode == "GR08MM1305" and a.grid.orientation == 0 and a.grid.missing == ((12, 4),)
    a = anatomy_for_recording(bare, grid="13x5", ied=8, missing="0,0")
    assert a.grid.channel_order[0] == (0, 1)
    with pytest.raises(E.GeometryError, match="--ied"):
        anatomy_for_recording(bare, grid=(13, 5), missing="0,0")
    with pytest.raises(E.GeometryError, match="32 channels"):
        anatomy_for_recording(bare, electrode="HD10MM0804")
    with pytest.raises(E.GeometryError, match="tibialis_anterior"):  # 8x8 @ 10 mm is wider than the biceps
        anatomy_for_recording(bare, electrode="GR10MM0808")
    # the recording's rate is used and the MUAP window keeps its duration
    fast = Recording(emg=bare.emg, fs=10240.0, electrode="GR10MM0808")
    a = anatomy_for_recording(fast, "tibialis_anterior")
    assert a.grid.fs_hz == 10240.0 and a.grid.muap_samples == 96 * 5


def test_layout_changes_the_muaps_by_permutation():
    """Same MU seen through row-major order and through the GR08MM1305 pinout: same MUAPs, permuted."""
    from bmiss.conductor import Conductor, muaps

    base = anatomy.load("biceps_brachii")
    rm = base.with_grid(muap_samples=32)
    gr = rm.with_layout(E.load_layout("GR08MM1305"))
    p = np.array([[6.0, 3.0, np.log(100.0), 0.0, 4.0, 120.0]], np.float32)
    m_rm = np.asarray(muaps(Conductor.from_anatomy(rm), p, mode="expected"))[0]
    m_gr = np.asarray(muaps(Conductor.from_anatomy(gr), p, mode="expected"))[0]
    _, rc_rm = rm.grid.electrode_positions()
    idx = {tuple(x): i for i, x in enumerate(rc_rm.tolist())}
    order = [idx[tuple(x)] for x in E.load_layout("GR08MM1305").channel_map.tolist()]
    np.testing.assert_allclose(m_gr, m_rm[order], rtol=1e-4, atol=1e-4 * np.abs(m_rm).max())
    assert not np.allclose(m_gr, m_rm)  # the order really differs


def test_orientation_flag_alone_turns_a_named_grid():
    rec = _rec(electrode="GR08MM1305")  # orientation 180 by default
    lay = E.resolve_layout(rec, orientation=0)
    np.testing.assert_array_equal(lay.channel_map, E.load_layout("GR08MM1305", 0).channel_map)
    # a file's own channel permutation is kept: stored channel k still carries the same grid channel
    perm = np.random.default_rng(1).permutation(64)
    shuffled = Recording(emg=rec.emg, fs=rec.fs, electrode="GR08MM1305", orientation=180,
                         channel_map=E.load_layout("GR08MM1305", 180).channel_map[perm])
    lay = E.resolve_layout(shuffled, orientation=0)
    np.testing.assert_array_equal(lay.channel_map, E.load_layout("GR08MM1305", 0).channel_map[perm])
    with pytest.raises(E.LayoutError, match="--electrode CODE"):
        E.resolve_layout(_rec(), orientation=0)
