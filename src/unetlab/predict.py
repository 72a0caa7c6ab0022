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

Normalisation is the caller's: pass an image already normalised to float (the CLI uses
:func:`unetlab.data.normalize_image`); integer images are cast to float32 as they are.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Sequence

import numpy as np
import torch

from .errors import UnetlabError
from .tiling import (DIHEDRAL, TileGeometry, apply_dihedral, choose_tile_size, dihedral_rect_to_image,
                     dihedral_shape, invert_dihedral, plan_tiles, read_padded)

__all__ = ["predict_tiled", "image_layout"]

#: Tiles of at least this many input pixels run in channels-last memory format on CPU.
CHANNELS_LAST_MIN_PIXELS = 192 * 192


def image_layout(net, shape: Sequence[int]) -> tuple[bool, tuple[int, ...]]:
    """How ``predict_tiled`` reads an image of ``shape`` for ``net``.

    Returns ``(is_stack, output_shape)``:

    * (H, W): single-channel image → (K, H, W)
    * (C, H, W) with C == net.in_channels > 1 → (K, H, W)
    * (S, H, W) when net.in_channels == 1: a stack of S slices → (S, K, H, W)
      (a (1, H, W) array is a stack of one slice)
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
        if cin == 1:
            return True, (shape[0], K) + shape[1:]
        if shape[0] != cin:
            raise UnetlabError(f"image of shape {shape} has {shape[0]} channels (axis 0) but the "
                               f"model expects {cin}")
        return False, (K,) + shape[1:]
    if len(shape) == 4:
        if shape[1] != cin:
            raise UnetlabError(f"image stack of shape {shape} has {shape[1]} channels (axis 1) "
                               f"but the model expects {cin}")
        return True, (shape[0], K) + shape[2:]
    raise UnetlabError(f"image of shape {shape}: expected (H, W), (C, H, W), (S, H, W) or "
                       f"(S, C, H, W)")


def _read(image, lead: tuple, rows: tuple[int, int], cols: tuple[int, int],
          cin: int) -> np.ndarray:
    """(C, h, w) float32 block of ``image[lead]`` with mirror padding outside the image."""
    block = read_padded(image, rows, cols, lead)
    return block.reshape((cin,) + block.shape[-2:])


class _NetRunner:
    """The network prepared for inference (eval, device, channels_last), restored on exit."""

    def __init__(self, net, device, channels_last, autocast):
        self.net = net
        self.device = device
        self.channels_last = channels_last
        self.autocast = autocast

    def __enter__(self):
        net = self.net
        self.was_training = net.training
        self.saved = None
        try:
            p_dev = next(net.parameters()).device
        except StopIteration:  # pragma: no cover - a UNet always has parameters
            p_dev = torch.device("cpu")
        if self.device != p_dev:
            # never move the caller's network: work on a copy on the device
            self.run = copy.deepcopy(net).to(self.device)
        else:
            self.run = net
            if self.channels_last:
                self.saved = {n: p.data for n, p in net.named_parameters()}
        self.run.eval()
        if self.channels_last:
            self.run.to(memory_format=torch.channels_last)
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            for n, p in self.net.named_parameters():
                p.data = self.saved[n]
        self.net.train(self.was_training)
        return False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        ctx = (torch.autocast(self.device.type, dtype=torch.float16)
               if self.autocast else contextlib.nullcontext())
        with ctx:
            logits = self.run(x)
        return torch.softmax(logits.float(), dim=1)


def predict_tiled(net, image, tile_size: int | Sequence[int] | None = None, tta: bool = False,
                  batch_size: int = 1, out: Any = None, progress: Any = False,
                  device: str | torch.device | None = None, *, memory_budget: int | None = None,
                  channels_last: bool | None = None, autocast: bool | None = None):
    """Class probabilities of ``image`` by overlap-tile prediction (Fig. 2), optionally averaged
    over the 8 rotations/flips.

    Parameters
    ----------
    net : unetlab.UNet
        Any padding. Used in eval mode (dropout off); its training flag and parameters are
        restored afterwards. It is never moved: if ``device`` differs from where its weights are,
        a copy runs there.
    image : array-like, (H, W), (C, H, W), (S, H, W) or (S, C, H, W)
        Already normalised (e.g. :func:`unetlab.data.normalize_image`), cast to float32 per tile.
        Anything that supports basic slicing and ``numpy.asarray``: numpy, numpy.memmap,
        ``tifffile.memmap``, zarr, dask, h5py. Only the pixels of the current tiles are read.
        A 3-D array is a stack of slices when ``net.in_channels == 1`` (see :func:`image_layout`).
    tile_size : int, (h, w) or None
        Input tile size in pixels (572 for the paper). Rounded down to the nearest valid size
        and down to what covers the image. None: the largest valid tile whose forward pass fits
        ``memory_budget`` (see :func:`unetlab.tiling.choose_tile_size`, 1 GiB by default).
    tta : bool
        Average the 8 dihedral transforms, each exactly inverted (see the module docstring).
    batch_size : int
        Image tiles per forward pass (× 8 transforms with ``tta``).
    out : array-like or None
        Where to write the result, of shape (K, H, W) (or (S, K, H, W) for stacks): a numpy
        array, numpy/tifffile memmap, zarr array or any object with ``__setitem__`` (and
        ``__getitem__`` when ``tta``). Each output pixel is written once (without ``tta``);
        with ``tta``, ``out`` is zeroed tile by tile and the 8 terms are added to it.
        None: a new numpy array is returned.
    progress : bool or tqdm-like
        True: a tqdm bar over the tiles on stderr; or an object with ``update(n)``.
    device : "cpu", "cuda", torch.device or None (where the network's weights are)
    memory_budget : int or None
        Bytes for the automatic tile size (default 1 GiB).
    channels_last : bool or None
        Run convolutions in channels-last memory format (None: on CPU for tiles of at least
        192² pixels, where oneDNN runs 1.1–2.4× faster with it; on tiny tiles it is slower).
    autocast : bool or None
        float16 autocast (None: on CUDA only). Results then agree with float32 to ~1e-3.

    Returns
    -------
    ``out`` (or a new float32 numpy array): probabilities (K, H, W) or (S, K, H, W), summing to 1
    over K (up to rounding).
    """
    if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
        image = np.asarray(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    shape = tuple(int(s) for s in image.shape)
    is_stack, out_shape = image_layout(net, shape)
    if min(shape[-2:]) < 1:
        raise UnetlabError(f"image of shape {shape} is empty")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise UnetlabError(f"batch_size must be >= 1, got {batch_size}")
    if out is None:
        out = (np.zeros if tta else np.empty)(out_shape, dtype=np.float32)
    elif tuple(int(s) for s in out.shape) != out_shape:
        raise UnetlabError(f"out has shape {tuple(out.shape)}, expected {out_shape}")

    if device is None:
        try:
            device = next(net.parameters()).device
        except StopIteration:  # pragma: no cover
            device = torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnetlabError("--device cuda: CUDA is not available on this machine")
    if autocast is None:
        autocast = device.type == "cuda"

    geom = TileGeometry.from_net(net)
    H, W = shape[-2:]
    transforms = DIHEDRAL if tta else DIHEDRAL[:1]
    if tile_size is None:
        req = choose_tile_size(geom, (H, W), batch=batch_size * len(transforms),
                               budget=memory_budget)
    elif isinstance(tile_size, (int, np.integer)):
        req = (int(tile_size), int(tile_size))
    else:
        req = tuple(int(t) for t in tile_size)
        if len(req) != 2:
            raise UnetlabError(f"tile_size must be an int or (h, w), got {tile_size!r}")
    if min(req) < 1:
        raise UnetlabError(f"tile_size must be positive, got {tile_size!r}")

    if channels_last is None:
        # oneDNN's channels-last kernels are 1.1-2.4x faster on realistic tiles but have a fixed
        # cost that dominates tiny ones (measured on this project's CPU machine)
        channels_last = device.type == "cpu" and req[0] * req[1] >= CHANNELS_LAST_MIN_PIXELS
    plans = {}
    for g in transforms:
        rq = (req[1], req[0]) if g[0] else req
        plans[g] = plan_tiles(geom, dihedral_shape((H, W), g), rq)
    ntiles = len(plans[transforms[0]])
    slices = range(shape[0]) if is_stack else [None]

    bar = None
    if progress is True:
        from tqdm.auto import tqdm
        bar = tqdm(total=ntiles * len(slices), unit="tile", desc="predict", leave=False)
    elif progress:
        bar = progress

    cin = int(net.in_channels)
    step = batch_size * len(transforms)
    inv_n = np.float32(1.0 / len(transforms))
    buffers: dict[tuple, torch.Tensor] = {}
    pin = device.type == "cuda"

    def buffer(n, h, w):
        key = (n, h, w)
        if key not in buffers:
            b = torch.empty((n, cin, h, w), dtype=torch.float32, pin_memory=pin)
            if channels_last:
                b = b.contiguous(memory_format=torch.channels_last)
            buffers[key] = b
        return buffers[key]

    try:
        with _NetRunner(net, device, channels_last, autocast) as runner, torch.inference_mode():
            for s in slices:
                lead = () if s is None else (s,)
                if tta:
                    for t in plans[transforms[0]]:
                        y0, y1, x0, x1 = t.own
                        out[lead + (slice(None), slice(y0, y1), slice(x0, x1))] = 0.0
                items = [(g, plans[g].tiles[k]) for k in range(ntiles) for g in transforms]
                for c0 in range(0, len(items), step):
                    chunk = items[c0:c0 + step]
                    groups: dict[tuple[int, int], list] = {}
                    for g, t in chunk:
                        groups.setdefault(plans[g].tile_in, []).append((g, t))
                    for (h, w), group in groups.items():
                        buf = buffer(len(group), h, w)
                        for i, (g, t) in enumerate(group):
                            y0, y1, x0, x1 = dihedral_rect_to_image(t.inp, (H, W), g)
                            patch = torch.from_numpy(_read(image, lead, (y0, y1), (x0, x1),
                                                           cin))
                            buf[i].copy_(apply_dihedral(patch, g))
                        x = buf.to(device, non_blocking=True)
                        prob = runner(x)
                        m = geom.margin if geom.padding == "same" else 0
                        for i, (g, t) in enumerate(group):
                            oy0, _, ox0, _ = t.out
                            y0, y1, x0, x1 = t.own
                            p = prob[i, :, m + y0 - oy0:m + y1 - oy0, m + x0 - ox0:m + x1 - ox0]
                            p = invert_dihedral(p, g).cpu().numpy()
                            ry0, ry1, rx0, rx1 = dihedral_rect_to_image(t.own, (H, W), g)
                            key = lead + (slice(None), slice(ry0, ry1), slice(rx0, rx1))
                            if tta:
                                out[key] = np.asarray(out[key]) + p * inv_n
                            else:
                                out[key] = p
                    if bar is not None:
                        bar.update(len(chunk) // len(transforms))
    finally:
        if progress is True and bar is not None:
            bar.close()
    return out
