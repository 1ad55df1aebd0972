"""Cached training data for the posterior network: chunks of encoded simulated MUAPs on disk.

``generate(cache_dir, n_chunks, seed)`` writes ``chunk_00000.npz`` ... (resumable: existing chunks
are kept, each chunk has its own seed ``seed * 100003 + index``); ``load(cache_dir)`` concatenates them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_write
from . import features as F
from . import simulate as S

CHUNK = 256
SUB = 32  # examples per compiled simulator call (one k-grid bucket and one sampling rate)
_BUCKET_P = np.diff(S._TOP_EDGES) / np.diff(S._TOP_EDGES).sum()


def make_chunk(seed: int, n: int = CHUNK) -> dict:
    """``n`` encoded examples: tokens (float16), mask, globals_base, centre, targets and drawn values."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n // SUB):
        b = int(rng.choice(len(_BUCKET_P), p=_BUCKET_P))
        fs = float(rng.choice(S.FS_CHOICES))
        d = S.simulate_batch(rng, SUB, b, fs)
        f = F.encode(d["muaps"], d["noise_std"], d["t_ms"], d["pos"], d["radius_mm"], d["fs"], n_el=d["n_el"],
                     window_ms=d["window_ms"])
        th = d["theta"].copy()
        th[:, 1] -= f["centre"][:, 0]  # x and IZ relative to the used electrodes' centre
        th[:, 3] -= f["centre"][:, 1]
        parts.append({"tokens": f["tokens"].astype(np.float16), "mask": f["mask"], "globals_base": f["globals_base"],
                      "centre": f["centre"].astype(np.float32), "theta": th, "fat_mm": d["fat_mm"],
                      "skin_mm": d["skin_mm"], "anisotropy": d["anisotropy"], "pnr_drawn": d["pnr"],
                      "gamma2": d["gamma2"], "fs": np.full(SUB, fs, np.float32), "rotation_deg": d["rotation_deg"],
                      "sigma_r": d["sigma_r"]})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def generate(cache_dir, n_chunks: int, seed: int, progress: bool = True) -> list[Path]:
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    paths = []
    for i in tqdm(range(n_chunks), desc="simulate", disable=not progress):
        p = cache / f"chunk_s{seed}_{i:05d}.npz"
        if not p.exists():
            c = make_chunk(seed * 100003 + i)
            atomic_write(p, lambda tmp, c=c: np.savez(open(tmp, "wb"), **c))
        paths.append(p)
    return paths


def load(paths) -> dict:
    parts = [dict(np.load(p)) for p in paths]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
