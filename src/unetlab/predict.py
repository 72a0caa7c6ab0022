"""Overlap-tile prediction with 8-fold test-time averaging (Ronneberger et al. 2015, Sec. 2,
Fig. 2 and Sec. 4: "averaged over 7 rotated versions of the input").

:func:`predict_tiled` turns an image of any size into class probabilities (the pixel-wise
soft-max of Sec. 3) tile by tile, reading the image lazily and writing each output tile straight
into the result, so memory does not grow with the image.

Guarantees (tested in tests/test_predict.py):

* **Seamless.** For a "valid" network the result equals — within float32 rounding, < 1e-5 —
  one pass of the network over the whole image mirror-padded by ``net.context`` on every side
  and further at the bottom/right up to a valid size, cropped to H×W; the padding is ONE
  ``numpy.pad(image, ((c, n_h − H − c), (c, n_w − W − c)), mode="reflect")`` (repeated
  reflection for images smaller than the context), ``n`` the smallest valid input whose output
  covers the axis. (The extra bottom/right pixels matter: with 2×2 pooling an output pixel can
  see up to 2^depth − 1 pixels beyond ``context`` on one side.) Tiles start on the 2^depth
  pooling lattice (see :mod:`unetlab.tiling`). For a "same" network every tile carries a halo of
  the receptive radius rounded up to the lattice, and the reference is one pass over the image
  mirror-padded by that halo (and up to a multiple of 2^depth), cropped; as the halo covers the
  whole receptive field, the zero padding inside the network never reaches a kept pixel and the
  two agree to the same 1e-5 (tested). Networks whose output depends on tile statistics
  (``norm="instance"``) or that interpolate (``upsampling="bilinear"``) are seamless only
  approximately.
* **Test-time augmentation** (``tta=True``) is ``mean_g g⁻¹(P(g(image)))`` over the 8 dihedral
  transforms g (identity, 3 rotations, 4 reflections), P being the seamless prediction above.
  Each transform is tiled in its own frame (tiles on the lattice of g(image)), so the result is
  exactly equivariant: ``predict(g(x)) == g(predict(x))`` to float rounding, for every image
  size (odd sizes included). Tiles of all transforms are batched together: one forward pass holds
  ``batch_size`` tiles × their 8 transforms (two passes of 4 when tiles are not square, since a
  transpose swaps height and width).

Memory: the image is read one input tile at a time (a basic slice of the tile's bounding box)
and each output tile is written into ``out`` as soon as it is computed; besides ``out``, memory
holds one batch of input tiles, the network's activations (bounded by ``memory_budget`` when
the tile size is automatic) and one batch of output tiles. With ``out`` a zarr array a
20000×20000 image runs within 2 GiB peak RSS (benchmarks/bench_predict.py). A numpy memmap
``out`` works too, but its written pages count as resident until the kernel writes them back.

Normalisation: by default (``normalize=True``) the image is normalised per slice and channel
exactly as the ``unetlab predict`` command and training do (1st/99.8th percentiles, see
:mod:`unetlab.sources`); pass ``normalize=False`` for an image that is already normalised.

Volumes. A ``spatial_dims=3`` network (Çiçek et al. 2016) predicts a volume (Z, Y, X) or
(C, Z, Y, X) as ONE volume → (K, Z, Y, X), through the same engine: tiles on the pooling lattice
of every axis (anisotropic pooling such as ``(1, 2, 2)`` included), mirrored context on every
side, the same seamlessness (one pass over the whole mirror-padded volume, ≤ 1e-5) and the same
bounded memory (``out`` a zarr array or memmap). Normalisation is per channel over the whole
volume (:class:`unetlab.sources.VolumeView`). ``tta=True`` averages every rotation/flip the
network admits (:func:`unetlab.tiling.tta_transforms`): the 48 permutations × flips of the axes
when every axis pools alike, the 16 that keep z (the 8 in-plane ones × the z-flip) when it does
not or when ``spacing`` says z is sampled differently; ``tta=16`` / ``tta=48`` ask for one.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .engine import CHANNELS_LAST_MIN_PIXELS, TileEngine, balanced_tile, make_runner
from .errors import UnetlabError
from .sources import ImageSource, NormalizedView, VolumeView, from_array, volume_source
from .tiling import TileGeometry, choose_tile_size, read_padded, tta_transforms

__all__ = ["predict_tiled", "image_layout", "CHANNELS_LAST_MIN_PIXELS"]


def image_layout(net, shape: Sequence[int]) -> tuple[bool, tuple[int, ...]]:
    """How ``predict_tiled`` reads an image of ``shape`` for ``net``.

    Returns ``(is_stack, output_shape)``:

    * (H, W): single-channel image → (K, H, W)
    * (C, H, W) with C == net.in_channels (1 included) → (K, H, W)
    * (S, H, W) when net.in_channels == 1 and S > 1: a stack of S slices → (S, K, H, W)
    * (S, C, H, W) → (S, K, H, W)

    Raises :class:`UnetlabError` when the channels do not match the model.
    """
    shape = tuple(int(s) for s in shape)
    cin, K = int(net.in_channels), int(net.num_classes)
    if len(shape) == 2:
        if cin != 1:
            raise UnetlabError(f"image of shape {shape} has 1 channel but the model expects {cin}")
        return False, (K,) + shape
    if len(shape) == 3:
        if shape[0] == cin:
            return False, (K,) + shape[1:]
        if cin == 1:
            return True, (shape[0], K) + shape[1:]
        raise UnetlabError(f"image of shape {shape} has {shape[0]} channels (axis 0) but the "
                           f"model expects {cin}")
    if len(shape) == 4:
        if shape[1] != cin:
            raise UnetlabError(f"image stack of shape {shape} has {shape[1]} channels (axis 1) "
                               f"but the model expects {cin}")
        return True, (shape[0], K) + shape[2:]
    raise UnetlabError(f"image of shape {shape}: expected (H, W), (C, H, W), (S, H, W) or "
                       f"(S, C, H, W)")


def _tile_request(geom: TileGeometry, tile_size, hw, batch: int,
                  memory_budget) -> tuple[int, ...]:
    """The requested input tile, one size per spatial axis of ``hw``: ``tile_size`` as given
    (int or one per axis), or None → the largest tile whose forward pass of ``batch`` tiles fits
    the memory budget, shrunk to the smallest that needs no more tiles
    (:func:`unetlab.engine.balanced_tile`)."""
    dims = len(hw)
    if tile_size is None:
        return balanced_tile(geom, hw, choose_tile_size(geom, hw, batch=batch,
                                                        budget=memory_budget))
    if isinstance(tile_size, (int, np.integer)):
        req = (int(tile_size),) * dims
    else:
        req = tuple(int(t) for t in tile_size)
        if len(req) != dims:
            axes = "(h, w)" if dims == 2 else "(d, h, w)"
            raise UnetlabError(f"tile_size must be an int or {axes}, got {tile_size!r}")
    if min(req) < 1:
        raise UnetlabError(f"tile_size must be positive, got {tile_size!r}")
    return req


def transforms(geom: TileGeometry, tta, spacing=None) -> tuple:
    """:func:`unetlab.tiling.tta_transforms` with its refusals as :class:`UnetlabError`."""
    try:
        return tta_transforms(geom, tta, spacing)
    except ValueError as e:
        raise UnetlabError(str(e)) from None


def as_source(net, image, normalize=True):
    """``image`` as a (S, C, H, W) source for ``net`` (an :class:`ImageSource` or a normalised
    view of one): ``normalize`` True (percentile normalisation), False, or (S, C, 2) stats."""
    src = image if isinstance(image, (ImageSource, NormalizedView)) else \
        from_array(image, int(net.in_channels))
    if src.shape[1] != int(net.in_channels):
        raise UnetlabError(f"image has {src.shape[1]} channel(s) but the model expects "
                           f"{int(net.in_channels)}")
    if min(src.shape[-2:]) < 1 or src.shape[0] < 1:
        raise UnetlabError(f"image of shape {tuple(src.shape)} is empty")
    if normalize is False or normalize is None or isinstance(src, NormalizedView):
        return src
    if normalize is True:
        return NormalizedView(src)
    stats = np.asarray(normalize, dtype=np.float64)
    if stats.ndim == 2:                        # (C, 2): the same for every slice
        stats = np.repeat(stats[None], src.shape[0], axis=0)
    return NormalizedView(src, stats)


def as_volume(net, image, normalize=True) -> VolumeView:
    """``image`` as the (C, Z, Y, X) float32 view a 3D network reads (:class:`VolumeView`):
    ``normalize`` True (percentiles of the whole volume, per channel), False, or (C, 2)
    stats."""
    if isinstance(image, VolumeView):
        return image
    src = volume_source(image, int(net.in_channels))
    Z, C, Y, X = src.shape
    if C != int(net.in_channels):
        raise UnetlabError(f"volume has {C} channel(s) but the model expects "
                           f"{int(net.in_channels)}")
    if min(Z, Y, X) < 1:
        raise UnetlabError(f"volume of shape {tuple(src.shape)} is empty")
    if normalize is True:
        return VolumeView(src)
    if normalize is False or normalize is None:
        return VolumeView(src, stats=False)
    return VolumeView(src, stats=normalize)


def _output(out, shape: tuple[int, ...], tta: bool):
    """``out`` checked against ``shape``, or a new float32 array (zeros for TTA sums)."""
    if out is None:
        return (np.zeros if tta else np.empty)(shape, dtype=np.float32)
    if tuple(int(s) for s in out.shape) != shape:
        raise UnetlabError(f"out has shape {tuple(out.shape)}, expected {shape}")
    return out


def _progress_bar(progress, total: int):
    """(bar or None, owned): a tqdm bar when ``progress`` is True, else the caller's object."""
    if progress is True:
        from tqdm.auto import tqdm

        return tqdm(total=total, unit="tile", desc="predict", leave=False), True
    if progress and getattr(progress, "total", 0) is None:
        progress.total = total            # a tqdm-like object made without a total
    return (progress or None), False


def predict_tiled(net, image, tile_size: int | Sequence[int] | None = None, tta=False,
                  batch_size: int = 1, out: Any = None, progress: Any = False,
                  device: str | torch.device | None = None, *, normalize=True,
                  precision: str = "fp32", memory_budget: int | None = None,
                  channels_last: bool | None = None, spacing: Sequence[float] | None = None):
    """Class probabilities of ``image`` by overlap-tile prediction (Fig. 2), optionally averaged
    over the 8 rotations/flips (volumes: 16 or 48, see the module docstring).

    Parameters
    ----------
    net : unetlab.UNet
        Any padding. Used in eval mode (dropout off); its training flag and parameters are
        restored afterwards. It is never moved: if ``device`` differs from where its weights are,
        a copy runs there.
    image : array-like, (H, W), (C, H, W), (S, H, W) or (S, C, H, W), or an opened source
        For a 3D network: one volume (Z, Y, X) or (C, Z, Y, X), or an opened source (its
        slices are z). Raw intensities (``normalize=True``, default) or already normalised
        (``normalize=False``). Anything that supports basic slicing and ``numpy.asarray``:
        numpy, numpy.memmap, ``tifffile.memmap``, zarr, dask, h5py, torch; or
        :func:`unetlab.sources.open_image` of a file. Only the pixels of the current tiles
        are read (and the normalisation subsample). Layout: :func:`image_layout`.
    tile_size : int, (h, w), (d, h, w) or None
        Input tile size in pixels (572 for the paper; 116×132×132 for Çiçek et al.). Rounded
        down to the nearest valid size and down to what covers the image. None: the largest
        valid tile whose forward pass fits ``memory_budget`` (see :func:`unetlab.tiling.choose_tile_size`, 1 GiB by default).
    tta : bool or int
        Average the 8 dihedral transforms, each exactly inverted (see the module docstring);
        volumes: the 48 or 16 rotations/flips the network admits, or a count 16 / 48.
    batch_size : int
        Image tiles per forward pass (× the transforms with ``tta``).
    out : array-like or None
        Where to write the result, of shape (K, H, W) (or (S, K, H, W) for stacks; (K, Z, Y, X)
        for volumes): a numpy
        array, numpy/tifffile memmap, zarr array or any object with ``__setitem__`` (and
        ``__getitem__`` when ``tta``). None: a new float32 numpy array is returned.
    progress : bool or tqdm-like
        True: a tqdm bar over the tiles on stderr; or an object with ``update(n)``.
    device : "cpu", "cuda", torch.device or None (where the network's weights are)
    normalize : True, False or stats
        True: percentile normalisation per slice and channel (as training and the CLI;
        volumes: per channel over the whole volume); False: use the values as they are; or
        (S, C, 2) / (C, 2) (low, high) per channel.
    precision : "fp32", "bf16", "fp16" or "auto"
        Arithmetic of the forward pass (``unetlab.hardware.resolve_precision``; "auto": bf16
        where the device computes it natively). Soft-max and averaging are float32; bf16
        results agree with fp32 to ~1e-2.
    memory_budget : int or None
        Bytes for the automatic tile size (default 1 GiB).
    channels_last : bool or None
        Channels-last memory format (None: on CPU for image tiles of at least 192² pixels).
    spacing : (dz, dy, dx) or None
        Voxel spacing (any unit) for the choice of ``tta=True``: axes with different spacing
        are never swapped.

    Returns
    -------
    ``out`` (or a new float32 numpy array): probabilities (K, H, W), (S, K, H, W) or
    (K, Z, Y, X), summing to 1 over K (up to rounding).
    """
    if int(batch_size) < 1:
        raise UnetlabError(f"batch_size must be >= 1, got {batch_size}")
    geom = TileGeometry.from_net(net)
    items, shape, out_shape = _items(net, geom, image, normalize)
    out = _output(out, out_shape, bool(tta))
    ntrans = len(transforms(geom, tta, spacing))
    req = _tile_request(geom, tile_size, shape, int(batch_size) * ntrans, memory_budget)
    runner = make_runner(net, device, precision=precision, channels_last=channels_last,
                         tile_pixels=int(np.prod(req)))
    engine = TileEngine(runner, geom, tta=tta, batch_size=int(batch_size), tile_size=req,
                        spacing=spacing)
    rect = tuple(v for n in shape for v in (0, n))
    bar, owned = _progress_bar(progress, len(items) * len(engine.jobs(shape, rect)) // ntrans)
    try:
        with runner, torch.inference_mode():
            for lead, read in items:
                engine.predict_region(read, shape, rect, out, lead=lead, progress=bar)
    finally:
        if owned:
            bar.close()
    return out


def _items(net, geom: TileGeometry, image, normalize):
    """(items, spatial shape, output shape): the (lead index into ``out``, ``read(rect)``)
    pairs to predict — one per slice of a 2D stack, one for an image or a volume."""
    K = int(net.num_classes)
    if geom.spatial_dims == 3:
        view = as_volume(net, image, normalize)
        shape = tuple(view.shape[1:])

        def read_volume(rect):
            return read_padded(view, rect[0:2], rect[2:4], rect[4:6])

        return [((), read_volume)], shape, (K,) + shape
    src = as_source(net, image, normalize)
    S, _, H, W = src.shape
    items = []
    for s in range(S):
        def read(rect, s=s):
            return read_padded(src, (rect[0], rect[1]), (rect[2], rect[3]), lead=(s,))

        items.append(((s,) if src.stack else (), read))
    return items, (H, W), ((S, K, H, W) if src.stack else (K, H, W))
