"""Builders of third-party files whose structure copies the real exports (for the reader tests
and experiments/fuzz_readers.py).

* :func:`otbiolab_mat`: the OTBioLab+ ``.mat`` export of issue 18, column for column: 64
  ``Vastus Lateralis - AUX 3 (Channel 1->1) - GR08MM1305 (n)[uV]`` channels, then
  ``1 - 4 - Decomposition of ... (k)[a.u]`` k = 1..4 and ``Decomposition of ... (1)[a.u]``
  (binary discharge trains), ``4 - Source for decomposition of ... (k)[a.u]`` k = 1..4 and
  ``Source for decomposition of ... (1)[a.u]`` (pulse trains), ``acquired data[ %(MVC)]``: 75
  columns.  ``Data`` is [samples x columns] double, ``SamplingFrequency`` a double scalar and
  ``Description`` a [75 x 1] cell of char rows (or, ``description="char"``, a space-padded
  char matrix), as openhdemg's ``emg_from_otb`` reads them (``pd.DataFrame(Data,
  columns=Description)``).  The binary trains lag the pulse trains by the extension factor
  (8 samples), which openhdemg undoes with ``shift(-ext_factor)``.
* :func:`demuse_mat`: DEMUSE ``MUPulses`` (cell of 1-based samples), ``IPTs`` [units x
  samples], ``fsamp``, ``IED``, ``SIG`` (cell grid of channels), ``ref_signal``.
* :func:`muedit_mat`: MUedit output, struct ``signal`` with ``data`` [channels x samples],
  ``fsamp``, ``nChan``, ``ngrid``, ``gridname``, ``muscle``, ``Pulsetrain`` (cell {1, ngrid} of
  [units x samples]), ``Dischargetimes`` (cell {ngrid, units} of 1-based samples), ``target``,
  ``path``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FS = 2048.0
GRID = "GR08MM1305"
PREFIX = "Vastus Lateralis - AUX 3 (Channel 1->1) - " + GRID


def otb_columns(n_emg: int = 64, n_dec: tuple[int, int] = (4, 1)) -> list[str]:
    """The 75 labels of the issue-18 export (for the default arguments)."""
    labels = [f"{PREFIX} ({n})[uV]" for n in range(1, n_emg + 1)]
    a, b = n_dec
    labels += [f"1 - {a} - Decomposition of {PREFIX} ({k})[a.u]" for k in range(1, a + 1)]
    labels += [f"Decomposition of {PREFIX} ({k})[a.u]" for k in range(1, b + 1)]
    labels += [f"{a} - Source for decomposition of {PREFIX} ({k})[a.u]" for k in range(1, a + 1)]
    labels += [f"Source for decomposition of {PREFIX} ({k})[a.u]" for k in range(1, b + 1)]
    labels += ["acquired data[ %(MVC)]"]
    return labels


def unit_trains(n_samples: int, n_units: int, seed: int, fs: float = FS) -> list[np.ndarray]:
    """Regular-ish discharge trains (8-20 Hz, jittered), 0-based samples."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_units):
        rate = rng.uniform(8, 20)
        t = np.cumsum(rng.normal(fs / rate, 0.1 * fs / rate, int(n_samples / fs * rate * 1.5) + 2))
        t = t[(t > 20) & (t < n_samples - 20)].astype(np.int64)
        out.append(np.unique(t))
    return out


def otbiolab_mat(path, *, n_samples: int = 4096, seed: int = 0, ext_factor: int = 8, description: str = "cell",
                 data=None) -> tuple[Path, list[np.ndarray], np.ndarray]:
    """Write the issue-18 export; returns (path, discharge samples as the binary columns hold
    them, EMG [64, n] µV)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    labels = otb_columns()
    spikes = unit_trains(n_samples, 5, seed + 1)
    emg = (rng.standard_normal((64, n_samples)) * 15).astype(np.float64)
    binary = np.zeros((5, n_samples))
    src = np.abs(rng.standard_normal((5, n_samples))) * 0.05
    for u, s in enumerate(spikes):
        binary[u, s] = 1.0
        src[u, s - ext_factor] += 1.0  # the pulse train leads the binary train by the extension factor
    force = np.clip(np.linspace(0, 40, n_samples) + rng.standard_normal(n_samples), 0, None)
    table = np.vstack([emg, binary, src, force[None]]).T  # [samples x 75]
    if data is not None:
        table = data
    if description == "char":
        w = max(len(x) for x in labels)
        desc = np.array([x.ljust(w) for x in labels])  # a MATLAB char matrix: rows padded with spaces
    else:
        desc = np.empty((len(labels), 1), dtype=object)
        for i, x in enumerate(labels):
            desc[i, 0] = x
    savemat(path, {"Data": table, "SamplingFrequency": np.float64(FS), "Description": desc})
    return Path(path), spikes, emg


def demuse_mat(path, *, n_samples: int = 4096, n_units: int = 3, seed: int = 0) -> tuple[Path, list[np.ndarray]]:
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    spikes = unit_trains(n_samples, n_units, seed + 2)
    pulses = np.empty((1, n_units), dtype=object)
    ipts = np.abs(rng.standard_normal((n_units, n_samples))) * 0.05
    for u, s in enumerate(spikes):
        pulses[0, u] = (s + 1).astype(np.float64)[None, :]  # MATLAB 1-based row vector
        ipts[u, s] += 1.0
    sig = np.empty((13, 5), dtype=object)
    for r in range(13):
        for c in range(5):
            sig[r, c] = np.zeros((0, 0)) if (r, c) == (0, 0) else rng.standard_normal((1, n_samples))
    savemat(path, {"MUPulses": pulses, "IPTs": ipts, "fsamp": np.float64(FS), "IED": np.float64(8),
                   "SIG": sig, "ref_signal": np.linspace(0, 30, n_samples)[None, :]})
    return Path(path), spikes


def muedit_mat(path, *, n_samples: int = 4096, n_units: int = 3, seed: int = 0) -> tuple[Path, list[np.ndarray]]:
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    spikes = unit_trains(n_samples, n_units, seed + 3)
    dt = np.empty((1, n_units), dtype=object)
    pt = np.abs(rng.standard_normal((n_units, n_samples))) * 0.05
    for u, s in enumerate(spikes):
        dt[0, u] = (s + 1).astype(np.float64)[None, :]
        pt[u, s] += 1.0
    ptc = np.empty((1, 1), dtype=object)
    ptc[0, 0] = pt
    signal = {"data": rng.standard_normal((64, n_samples)), "fsamp": np.float64(FS), "nChan": np.float64(64),
              "ngrid": np.float64(1), "gridname": np.array([["GR08MM1305"]], dtype=object),
              "muscle": np.array([["VL"]], dtype=object), "Pulsetrain": ptc, "Dischargetimes": dt,
              "target": np.linspace(0, 30, n_samples)[None, :], "path": np.linspace(0, 30, n_samples)[None, :]}
    savemat(path, {"signal": signal})
    return Path(path), spikes


def otb4_archive(path, *, n_samples: int = 2048, seed: int = 0, sample_size: int = 2) -> tuple[Path, np.ndarray]:
    """An ``.otb4`` as OT's OpenOTB4 reader describes it: a tar with ``Tracks_000.xml``
    (``ArrayOfTrackInfo``/``TrackInfo``: SignalStreamPath, TotalChannelsInFile,
    AcquisitionChannel, NumberOfChannels, SampleSize, SamplingFrequency, Gain, ADC_Nbits,
    ADC_Range, IsControl, Title, Description/SensorType), ``DeviceParameters.xml`` and one
    ``.sig`` of interleaved little-endian samples: 64 EMG channels of a GR08MM1305 grid then 8
    control channels.  Returns (path, the EMG in µV as the reader should give it)."""
    import io
    import tarfile

    rng = np.random.default_rng(seed)
    dt = "<i4" if sample_size == 4 else "<i2"
    raw = rng.integers(-3000, 3000, (n_samples, 72)).astype(dt)
    gain, nbits, vrange = 150.0, 16, 5.0
    emg_uv = raw[:, :64].T.astype(np.float64) * vrange / 2 ** nbits / gain * 1e6

    def track(title, start, n, control, sensor):
        return (f"<TrackInfo><Title>{title}</Title><SignalStreamPath>data_0.sig</SignalStreamPath>"
                f"<TotalChannelsInFile>72</TotalChannelsInFile><AcquisitionChannel>{start}</AcquisitionChannel>"
                f"<NumberOfChannels>{n}</NumberOfChannels><SampleSize>{sample_size}</SampleSize>"
                f"<SamplingFrequency>2048</SamplingFrequency><Gain>{gain if not control else 1}</Gain>"
                f"<ADC_Nbits>{nbits}</ADC_Nbits><ADC_Range>{vrange}</ADC_Range>"
                f"<IsControl>{'true' if control else 'false'}</IsControl><Device>Quattrocento;x</Device>"
                f"<Description><Name>{title}</Name><SensorType>{sensor}</SensorType></Description></TrackInfo>")

    xml = ('<?xml version="1.0" encoding="utf-8"?><ArrayOfTrackInfo>'
           + track("Vastus Lateralis", 0, 64, False, "Grid 8 mm GR08MM1305 13x5")
           + track("Control", 64, 8, True, "") + "</ArrayOfTrackInfo>").encode()
    with tarfile.open(path, "w") as tf:
        for name, data in (("Tracks_000.xml", xml), ("DeviceParameters.xml", b"<DeviceParameters/>"),
                           ("data_0.sig", raw.tobytes())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return Path(path), emg_uv
