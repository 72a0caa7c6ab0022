"""The zarr group of a Dask prediction (:mod:`unetlab.dask_predict`), resumable chunk by chunk.

Layout::

    OUT.zarr/                      zarr group, attrs["unetlab"] = {... "complete": bool}
      probabilities                float32 (K, H, W), (S, K, H, W) or (K, Z, Y, X) (a volume
                                   of a 3D network), one zarr chunk per Dask task
      chunk_done                   uint8 grid (nby, nbx), (S, nby, nbx) or (nbz, nby, nbx),
                                   1 = chunk written

A chunk is written, then its ``chunk_done`` cell (its own zarr chunk: no two tasks write the same
key); the caller writes ``attrs["unetlab"]["complete"] = True`` last. A re-run skips the chunks
whose marker is set and whose data chunk exists. ``layout`` is "image", "stack" or "volume";
a chunk's index is (s, iy, ix) for images and stacks (s = 0 for an image), (iz, iy, ix) for
volumes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import UnetlabError

__all__ = ["store_block", "open_or_create_group", "missing_chunks", "chunk_exists"]

#: dimension names of the probabilities array per layout
_AXIS_NAMES = {"image": ["class", "y", "x"], "stack": ["slice", "class", "y", "x"],
               "volume": ["class", "z", "y", "x"]}


def open_out_array(out: str, name: str):
    """The array ``name`` of the zarr group ``out``, opened for writing."""
    import zarr

    return zarr.open_array(f"{out}/{name}", mode="r+")


def store_block(block: np.ndarray, out: str, index: tuple[int, ...], layout: str,
                chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Write one predicted chunk — (1, K, h, w) of an image/stack at ``index`` (s, iy, ix), or
    (K, d, h, w) of a volume at (iz, iy, ix) — and then its done marker; returns its index."""
    probs = open_out_array(out, "probabilities")
    done = open_out_array(out, "chunk_done")
    if layout == "volume":
        box = tuple(slice(i * k, i * k + n) for i, k, n in zip(index, chunks, block.shape[1:]))
        probs[(slice(None),) + box] = block
        done[tuple(index)] = 1
        return index
    s, iy, ix = index
    k0, k1 = chunks
    h, w = block.shape[-2:]
    ys, xs = slice(iy * k0, iy * k0 + h), slice(ix * k1, ix * k1 + w)
    if layout == "stack":
        probs[s:s + 1, :, ys, xs] = block
        done[s, iy, ix] = 1
    else:
        probs[:, ys, xs] = block[0]
        done[iy, ix] = 1
    return index


def chunk_exists(arr, coords: tuple[int, ...]) -> bool:
    """Whether the data chunk at chunk coordinates ``coords`` of ``arr`` is stored."""
    from zarr.core.sync import sync

    key = arr.metadata.encode_chunk_key(tuple(int(c) for c in coords))
    sp = arr.store_path
    full = f"{sp.path}/{key}" if sp.path else key
    return bool(sync(sp.store.exists(full)))


def open_or_create_group(out: str, sig: dict, overwrite: bool, shape, chunks, grid,
                         layout: str):
    """(group, complete): the zarr group of an earlier run with the same signature ``sig``
    (``complete`` True when it finished), else a new empty one. Another run's output, or a
    folder that is not a prediction, is refused unless ``overwrite``."""
    import zarr

    if Path(out).exists():
        try:
            group = zarr.open_group(out, mode="r+")
            old = dict(group.attrs).get("unetlab")
        except Exception:  # noqa: BLE001
            old = None
        if old is None and not overwrite:
            raise UnetlabError(f"{out}: exists and is not a unetlab prediction; choose another "
                               "--out or pass --overwrite")
        same = old is not None and {k: v for k, v in old.items() if k != "complete"} == sig
        if old is not None and not same and not overwrite:
            raise UnetlabError(f"{out}: holds a prediction from another model, input or "
                               "options; choose another --out or pass --overwrite")
        if same:
            return group, bool(old.get("complete"))
    group = zarr.open_group(out, mode="w")
    group.attrs["unetlab"] = {**sig, "complete": False}
    group.create_array("probabilities", shape=shape, chunks=chunks, dtype="float32",
                       fill_value=np.float32(np.nan), config={"write_empty_chunks": True},
                       dimension_names=_AXIS_NAMES[layout])
    group.create_array("chunk_done", shape=grid, chunks=(1,) * len(grid), dtype="uint8",
                       fill_value=0, config={"write_empty_chunks": True})
    return group, False


def missing_chunks(group, grid, layout: str) -> list[tuple[int, int, int]]:
    """The indices ((s, iy, ix), or (iz, iy, ix) for a volume) of the chunks whose marker is
    unset or whose data chunk is absent."""
    probs = group["probabilities"]
    done = np.asarray(group["chunk_done"][...]).reshape(grid)
    missing = []
    for idx in np.ndindex(*grid):
        if layout == "volume":
            index, zc = idx, (0,) + idx
        else:
            index = idx if layout == "stack" else (0,) + idx
            zc = (index[0], 0) + index[1:] if layout == "stack" else (0,) + index[1:]
        if done[idx] == 1 and chunk_exists(probs, zc):
            continue
        missing.append(tuple(index))
    return missing
