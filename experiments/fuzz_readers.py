"""Fuzz every file reader with malformed inputs (hypothesis) and print a table by verdict.

Each reader starts from a valid file whose structure copies a real export (tests/exports.py,
the bmiss writers) and hypothesis mutates it: raw byte damage (flips, truncation, inserted
bytes) and structured damage (a member/variable/column replaced by a value of another type,
shape or size, NaN/inf/huge numbers, nested junk).  The promise checked: every input is either
read or refused with ONE line (a BmissFileError or FileNotFoundError) naming the file; a
multi-line message, a message without the file, or any other exception is a failure.

    python experiments/fuzz_readers.py [--examples N] [--out results/fuzz_readers.json]

Default: 300 inputs per reader (a few minutes on a 2-core CPU).  Exit 1 when any failure.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import tarfile
import tempfile
import time
import traceback
import warnings
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import exports  # noqa: E402
from bmiss import bids, electrodes as E, formats as F, io as bio, reference as R  # noqa: E402
from bmiss.errors import BmissFileError  # noqa: E402

FS = exports.FS


# ------------------------------------------------------------------ seeds (valid files)
def seeds(d: Path) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    rec = bio.Recording(emg=rng.standard_normal((8, 1200)).astype(np.float32), fs=FS,
                        true_spikes=[np.array([10, 500]), np.array([7])], ied_mm=8.0, grid_shape=(2, 4))
    p = d / "rec.npz"
    bio.save_recording_npz(p, rec)
    out["npz recording"] = p
    dec = bio.Decomposition(spikes=[np.array([5, 50])], sources=np.zeros((1, 1200), np.float32), fs=FS,
                            method="cbss", meta={"recording": bio.recording_fingerprint(rec)})
    p = d / "dec.npz"
    bio.save_decomposition(p, dec)
    out["npz decomposition"] = p
    p, _, _ = exports.otbiolab_mat(d / "otb.mat", n_samples=700)
    out["OTBioLab+ .mat"] = p
    out["DEMUSE .mat"] = exports.demuse_mat(d / "demuse.mat", n_samples=700)[0]
    out["MUedit .mat"] = exports.muedit_mat(d / "muedit.mat", n_samples=700)[0]
    p = d / "rec.json"
    r64 = bio.Recording(emg=rng.standard_normal((64, 300)).astype(np.float32), fs=FS, electrode="GR08MM1305")
    F.save_openhdemg(p, bio.Decomposition(spikes=[np.array([3, 90])], sources=np.zeros((1, 300)), fs=FS,
                                          method="x"), r64)
    out["openhdemg .json"] = p
    raw = rng.integers(-2000, 2000, (600, 65)).astype("<i2").tobytes()
    xml = ('<Device Name="Q" SampleFrequency="2048" DeviceTotalChannels="65" ad_bits="16"><Channels>'
           '<Adapter ID="AdapterQuattrocento" Gain="150" ChannelStartIndex="0">'
           + "".join(f'<Channel ID="GR08MM1305" Index="{i}" Gain="1"/>' for i in range(64))
           + '</Adapter><Adapter ID="AdapterControl" Gain="1" ChannelStartIndex="64"><Channel ID="Buffer" '
           'Index="0"/></Adapter></Channels></Device>').encode()
    p = d / "rec.otb+"
    with tarfile.open(p, "w") as tf:
        for name, data in (("abc.sig", raw), ("abc.xml", xml)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    out["OTB+ archive"] = p
    out["OTB4 archive"] = exports.otb4_archive(d / "rec.otb4", n_samples=400)[0]
    p = d / "map.json"
    E.save_channel_map(p, E.load_layout("GR08MM1305"))
    out["channel-map JSON"] = p
    p = d / "map.csv"
    p.write_text("# ied_mm = 8\n# rows = 2\nchannel,row,col\n0,0,0\n1,0,1\n2,1,0\n3,1,1\n")
    out["channel-map CSV"] = p
    r8 = bio.Recording(emg=rng.standard_normal((4, 2048)).astype(np.float32), fs=FS, grid_shape=(2, 2), ied_mm=8.0)
    paths = bids.save_emg_bids(d / "bids", r8, bio.Decomposition(spikes=[np.array([5, 900])],
                                                                 sources=np.zeros((1, 2048)), fs=FS, method="x"))
    out["EMG-BIDS .bdf"] = paths["emg"]
    out["EMG-BIDS events"] = paths["events"]
    return out


READ = {
    "npz recording": bio.load_recording,
    "npz decomposition": bio.load_decomposition,
    "OTBioLab+ .mat": bio.load_recording,
    "DEMUSE .mat": R.load_reference,
    "MUedit .mat": R.load_reference,
    "openhdemg .json": lambda p: (bio.load_recording(p), R.load_reference(p)),
    "OTB+ archive": bio.load_recording,
    "OTB4 archive": bio.load_recording,
    "channel-map JSON": E.load_channel_map,
    "channel-map CSV": E.load_channel_map,
    "EMG-BIDS .bdf": bio.load_recording,
    "EMG-BIDS events": R.load_reference,
}
REF_TOO = {"OTBioLab+ .mat"}  # also read its reference decomposition


# ------------------------------------------------------------------ mutations
junk_values = st.one_of(
    st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(-5, 5), max_size=4),
    st.lists(st.lists(st.floats(allow_nan=True), max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def np_junk():
    return st.one_of(
        st.builds(lambda v: np.asarray(v), st.floats(allow_nan=True, allow_infinity=True)),
        st.builds(lambda n, m, s: np.random.default_rng(s).standard_normal((n, m)) * 10 ** (s % 45),
                  st.integers(0, 5), st.integers(0, 70), st.integers(0, 2 ** 16)),
        st.builds(lambda v: np.asarray(v, dtype="<U8"), st.lists(st.text(max_size=4), max_size=3)),
        st.builds(lambda n: np.arange(n, dtype=np.int64) - 3, st.integers(0, 10)),
        st.just(np.zeros((0,))), st.just(np.ones((2, 2, 2))), st.just(np.array([1 + 2j])),
        st.just(np.array([1e40])), st.just(np.array(["x"], dtype=object)))


@st.composite
def byte_damage(draw, data: bytes):
    b = bytearray(data)
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "zero-run"]))
    if kind == "truncate":
        return bytes(b[: draw(st.integers(0, max(len(b) - 1, 0)))]), kind
    if kind == "insert":
        i = draw(st.integers(0, len(b)))
        return bytes(b[:i]) + draw(st.binary(min_size=1, max_size=64)) + bytes(b[i:]), kind
    n = draw(st.integers(1, 16))
    for _ in range(n):
        i = draw(st.integers(0, max(len(b) - 1, 0)))
        if b:
            b[i] = 0 if kind == "zero-run" else draw(st.integers(0, 255))
    return bytes(b), kind


def mutate_npz(draw, path: Path, out: Path) -> str:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    key = draw(st.sampled_from(sorted(arrays) + ["<drop>"]))
    if key == "<drop>":
        k = draw(st.sampled_from(sorted(arrays)))
        arrays.pop(k)
        np.savez(out, **arrays)
        return f"drop {k}"
    v = draw(np_junk())
    arrays[key] = v
    np.savez(out, **arrays)  # object arrays are pickled: the reader must refuse them
    return f"{key} <- {v.dtype}{v.shape}"


def mutate_mat(draw, path: Path, out: Path) -> str:
    from scipy.io import loadmat, savemat

    m = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
    key = draw(st.sampled_from(sorted(m)))
    how = draw(st.sampled_from(["replace", "drop", "column", "label"]))
    if how == "drop":
        m.pop(key)
        desc = f"drop {key}"
    elif how == "column" and "Data" in m:
        v = np.asarray(m["Data"], np.float64).copy()
        j = draw(st.integers(0, v.shape[1] - 1))
        v[:, j] = draw(st.sampled_from([np.nan, np.inf, 1e40, -1e300, 0.0, 2.0]))
        m["Data"] = v
        desc = f"Data column {j}"
    elif how == "label" and "Description" in m:
        d = np.asarray(m["Description"], dtype=object).ravel()
        j = draw(st.integers(0, len(d) - 1))
        d = d.copy()
        d[j] = draw(st.text(max_size=40))
        m["Description"] = d.reshape(-1, 1)
        desc = f"Description[{j}]"
    else:
        v = draw(np_junk())
        if key == "signal" and draw(st.booleans()):
            s = loadmat(path, simplify_cells=True)["signal"]
            f = draw(st.sampled_from(sorted(s)))
            s[f] = v
            m["signal"] = s
            desc = f"signal.{f} <- {v.dtype}{v.shape}"
        else:
            m[key] = v
            desc = f"{key} <- {v.dtype}{v.shape}"
    try:
        savemat(out, m)
    except Exception:  # noqa: BLE001  (scipy cannot write this junk: write the bytes damaged instead)
        out.write_bytes(path.read_bytes()[:100])
        desc += " (unwritable; truncated file instead)"
    return desc


def mutate_json_gz(draw, path: Path, out: Path) -> str:
    with gzip.open(path, "rt") as f:
        d = json.load(f)
    key = draw(st.sampled_from(sorted(d) + ["<drop>"]))
    if key == "<drop>":
        k = draw(st.sampled_from(sorted(d)))
        d.pop(k)
        desc = f"drop {k}"
    else:
        v = draw(junk_values)
        if draw(st.booleans()) and key in ("RAW_SIGNAL", "IPTS", "REF_SIGNAL", "EXTRAS", "ACCURACY"):
            inner = json.loads(d[key])
            f = draw(st.sampled_from(["columns", "index", "data"]))
            inner[f] = v
            d[key] = json.dumps(inner)
            desc = f"{key}.{f} <- {v!r:.40}"
        else:
            d[key] = json.dumps(v) if draw(st.booleans()) else v
            desc = f"{key} <- {v!r:.40}"
    with gzip.open(out, "wt") as f:
        json.dump(d, f)
    return desc


def mutate_text(draw, path: Path, out: Path) -> str:
    lines = path.read_text().splitlines()
    j = draw(st.integers(0, len(lines) - 1))
    how = draw(st.sampled_from(["replace-field", "replace-line", "drop-line"]))
    if how == "drop-line":
        lines.pop(j)
    elif how == "replace-line":
        lines[j] = draw(st.text(max_size=30))
    else:
        sep = "\t" if "\t" in lines[j] else ","
        parts = lines[j].split(sep)
        k = draw(st.integers(0, len(parts) - 1))
        parts[k] = draw(st.sampled_from(["abc", "", "n/a", "-1", "1e400", "nan", "2.5", "99999999999"]))
        lines[j] = sep.join(parts)
    out.write_text("\n".join(lines) + "\n")
    return f"{how} line {j}"


def mutate_json_text(draw, path: Path, out: Path) -> str:
    d = json.loads(path.read_text())
    key = draw(st.sampled_from(sorted(d)))
    v = draw(junk_values)
    d[key] = v
    out.write_text(json.dumps(d))
    return f"{key} <- {v!r:.40}"


STRUCT = {"npz recording": mutate_npz, "npz decomposition": mutate_npz, "OTBioLab+ .mat": mutate_mat,
          "DEMUSE .mat": mutate_mat, "MUedit .mat": mutate_mat, "openhdemg .json": mutate_json_gz,
          "channel-map JSON": mutate_json_text, "channel-map CSV": mutate_text, "EMG-BIDS events": mutate_text}


# ------------------------------------------------------------------ the run
def verdict(fn, path: Path, also_ref: bool) -> tuple[str, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(path)
            if also_ref:
                R.load_reference(path)
        return "read", ""
    except (BmissFileError, FileNotFoundError, FileExistsError) as e:
        msg = str(e)
        if "\n" in msg:
            return "bad message", "multi-line: " + msg[:160]
        if str(path) not in msg and path.name not in msg:
            return "bad message", "does not name the file: " + msg[:160]
        return "refused (1 line)", ""
    except Exception as e:  # noqa: BLE001
        tb = traceback.extract_tb(e.__traceback__)[-1]
        return "crash", f"{type(e).__name__}: {str(e)[:120]} at {Path(tb.filename).name}:{tb.lineno}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=300, help="inputs per reader")
    ap.add_argument("--out", default=str(ROOT / "results" / "fuzz_readers.json"))
    ap.add_argument("--only", default=None, help="fuzz only readers whose name contains this")
    a = ap.parse_args(argv)
    import logging

    logging.getLogger("bmiss").setLevel(logging.ERROR)  # warnings are allowed; they are not the subject here
    rows, failures = {}, {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seed_files = seeds(tmp / "seeds")
        for name, src in seed_files.items():
            if a.only and a.only.lower() not in name.lower():
                continue
            counts: dict[str, int] = {}
            fails: list[str] = []
            data = src.read_bytes()
            work = tmp / ("work-" + "".join(c if c.isalnum() else "_" for c in name))
            work.mkdir()
            n_run = [0]
            t0 = time.perf_counter()

            @settings(max_examples=a.examples, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(st.data())
            def run(dd):
                n_run[0] += 1
                # the damaged copy keeps the seed's name (readers pick by suffix, BIDS by siblings)
                sub = work / f"case{n_run[0]}"  # hypothesis may replay a case: a fresh folder each call
                if name.startswith("EMG-BIDS"):
                    import shutil

                    shutil.copytree(src.parent, sub)
                else:
                    sub.mkdir()
                out = sub / src.name
                if name in STRUCT and dd.draw(st.booleans()):
                    what = STRUCT[name](dd.draw, src, out)
                else:
                    b, what = dd.draw(byte_damage(data))
                    out.write_bytes(b)
                v, detail = verdict(READ[name], out, name in REF_TOO)
                counts[v] = counts.get(v, 0) + 1
                if detail and len(fails) < 5:
                    fails.append(f"{what}: {detail}")

            run()
            rows[name] = {"inputs": sum(counts.values()), **counts, "seconds": round(time.perf_counter() - t0, 1)}
            failures[name] = fails
            print(f"  {name}: {rows[name]}", file=sys.stderr, flush=True)
    cols = ["read", "refused (1 line)", "bad message", "crash"]
    print(f"\n{'reader':<20} {'inputs':>6} " + " ".join(f"{c:>16}" for c in cols) + f" {'s':>6}")
    for name, r in rows.items():
        print(f"{name:<20} {r['inputs']:>6} " + " ".join(f"{r.get(c, 0):>16}" for c in cols) + f" {r['seconds']:>6}")
    n_bad = sum(r.get("bad message", 0) + r.get("crash", 0) for r in rows.values())
    for name, f in failures.items():
        for x in f:
            print(f"FAIL {name}: {x}")
    print(f"\n{sum(r['inputs'] for r in rows.values())} inputs in {time.perf_counter() - t_all:.0f} s; "
          f"{n_bad} failures")
    from bmiss.files import provenance, write_json

    write_json(a.out, {"provenance": provenance(examples_per_reader=a.examples, only=a.only), "table": rows,
                       "failures": failures, "n_failures": n_bad})
    print(f"wrote {a.out}")
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
