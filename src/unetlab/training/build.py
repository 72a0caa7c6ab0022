"""The pieces a training run is made of, built from a :class:`TrainConfig`: the network and its
tile geometry, the optimiser and learning-rate schedule, the data and the tile sampler
(Ronneberger et al. 2015, Sec. 3), and the timing step that chooses the CPU thread count."""
from __future__ import annotations

import functools
import math
from typing import Callable

from ..errors import UnetlabError
from .config import TrainConfig, parse_pooling, parse_spacing

__all__ = ["build_net", "check_geometry", "make_optimizer", "lr_at", "load_samples",
           "make_sampler", "timing_step", "net_options", "tile_sizes", "aspect", "TILE_3D"]


def lr_at(config: TrainConfig, it: int) -> float:
    """Learning rate of step ``it`` (0-based): linear warm-up over ``warmup`` steps, then the
    decay ``schedule`` over the whole run (t = it / iterations). 'onecycle' has its own
    warm-up and ignores ``warmup``: cosine from lr/25 up to lr over the first 30 % of the
    steps, then cosine down to lr/(25·10⁴), as ``torch.optim.lr_scheduler.OneCycleLR`` with
    its defaults (without its momentum cycle)."""
    if config.schedule == "onecycle":
        return config.lr * _one_cycle(it, config.iterations)
    f = 1.0
    if config.warmup > 0 and it < config.warmup:
        f = (it + 1) / config.warmup
    t = min(max(it / max(config.iterations, 1), 0.0), 1.0)
    if config.schedule == "poly":
        f *= (1.0 - t) ** 0.9
    elif config.schedule == "cosine":
        f *= 0.5 * (1.0 + math.cos(math.pi * t))
    return config.lr * f


#: one-cycle: share of the steps spent rising, start = peak / DIV, end = start / FINAL_DIV
ONE_CYCLE_RISE, ONE_CYCLE_DIV, ONE_CYCLE_FINAL_DIV = 0.3, 25.0, 1e4


def _one_cycle(it: int, iterations: int) -> float:
    """The one-cycle factor of step ``it`` of ``iterations``: cosine annealing from 1/DIV to 1
    at step ``RISE·iterations − 1``, then to 1/(DIV·FINAL_DIV) at the last step."""
    start, end = 1.0 / ONE_CYCLE_DIV, 1.0 / (ONE_CYCLE_DIV * ONE_CYCLE_FINAL_DIV)
    top = float(ONE_CYCLE_RISE * iterations) - 1.0
    last = max(iterations - 1, 1)
    it = min(max(it, 0), last)

    def anneal(a: float, b: float, frac: float) -> float:
        return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * frac))

    if top > 0 and it <= top:
        return anneal(start, 1.0, it / top)
    return anneal(1.0, end, (it - top) / max(last - top, 1e-12))


#: the in-plane input tile of volumes when ``tile`` is 0: Çiçek et al. 2016 (Sec. 2)
TILE_3D = 132


def net_options(config: TrainConfig) -> dict:
    """The :class:`unetlab.UNet` arguments of ``config`` (besides the channel counts); 2D
    networks get exactly the arguments they always had."""
    opts = dict(depth=config.depth, width=config.width, padding=config.padding,
                norm=None if config.norm == "none" else config.norm, dropout=config.dropout,
                upsampling=config.upsampling)
    if config.channels != "paper":
        opts["channels"] = config.channels
    if config.dims == 3:
        opts.update(spatial_dims=3, pooling=parse_pooling(config.pooling, config.depth))
    return opts


def tile_sizes(config: TrainConfig, net):
    """(input tile, output tile) of ``net`` for ``config``: ints (pixels) for images, (z, y, x)
    tuples (voxels) for volumes; an invalid size is a :class:`UnetlabError` naming ``--tile``
    or ``--tile-z`` and the nearest valid sizes."""
    from ..model import GeometryError

    if config.dims == 2:
        tile = config.tile or net.valid_input_size(572)
        try:
            return tile, net.output_size(tile)
        except GeometryError as e:
            raise UnetlabError(f"tile (--tile): {e}") from None
    side = config.tile or TILE_3D
    y, x = (side, side) if config.tile else net.valid_input_size((1, side, side))[1:]
    z = config.tile_z or net.valid_input_size((y, 1, 1))[0]
    try:
        return (z, y, x), net.output_size((z, y, x))
    except GeometryError as e:
        small = net.valid_input_size((1, 1, 1))
        name = "tile" if net.is_valid_input_size((z, small[1], small[2])) else "tile_z"
        raise UnetlabError(f"{name} (--{name.replace('_', '-')}): {e}") from None


def build_net(config: TrainConfig, in_channels: int):
    """``(UNet, input tile, output tile)``: sides in pixels (images) or (z, y, x) voxels
    (volumes); He-initialised by the model."""
    from ..model import UNet

    net = UNet(in_channels=in_channels, num_classes=2, **net_options(config))
    tile, out = tile_sizes(config, net)
    return net, tile, out


def check_geometry(config: TrainConfig) -> None:
    """Fail fast (before reading data) on a tile the network cannot take and on generated
    images smaller than the smallest valid tile; the geometry does not depend on the width,
    so a width-1 network answers."""
    from ..model import UNet

    probe = UNet(**{**net_options(config), "width": 1, "norm": None, "dropout": 0.0,
                    "upsampling": "upconv"})
    if config.tile or config.dims == 3:
        tile_sizes(config, probe)
    uses_synthetic = "synthetic" in (config.data, config.val)
    smallest = probe.valid_input_size(1)
    smallest = max(smallest) if isinstance(smallest, tuple) else smallest
    if uses_synthetic and config.synthetic_size < smallest:
        raise UnetlabError(f"synthetic_size (--synthetic-size): must be at least {smallest} px "
                           f"(the smallest tile of a depth-{config.depth} network), got "
                           f"{config.synthetic_size}")


def _adam_class(optimizer: str):
    """``torch.optim.Adam`` or ``AdamW`` for ``--optimizer`` 'adam' or 'adamw'; None for SGD."""
    import torch

    return {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(optimizer)


def make_optimizer(config: TrainConfig, params):
    """SGD with momentum (the paper), Adam or AdamW (``momentum`` is their beta1; AdamW's
    ``weight_decay`` is decoupled from the gradient)."""
    import torch

    adam = _adam_class(config.optimizer)
    if adam is None:
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return adam(params, lr=config.lr, betas=(config.momentum, 0.999),
                weight_decay=config.weight_decay)


def _read(path: str, labels: str, what: str):
    from ..data import read_dataset

    try:
        return read_dataset(path, labels=labels or None)
    except UnetlabError as e:
        raise UnetlabError(f"{what}: {e}") from None


def _read_volumes(path: str, labels: str, what: str, unlabelled: int):
    from ..data import read_dataset_3d

    try:
        return read_dataset_3d(path, labels=labels or None,
                               unlabelled=None if unlabelled < 0 else unlabelled)
    except UnetlabError as e:
        hint = " (--dims 3 trains on volumes; images train without it)" \
            if "not a volume" in str(e) or "no volumes" in str(e) else ""
        raise UnetlabError(f"{what}: {e}{hint}") from None


def synthetic_volumes(n: int, size: int, seed: int, spacing=None):
    """``n`` generated touching-cell volumes (:func:`unetlab.synthetic.touching_cells_3d`,
    ``size``³ voxels of ``spacing``, default 1,1,1) as normalised volume samples."""
    from ..data import Sample, normalize_volume
    from ..synthetic import touching_cells_3d

    spacing = tuple(spacing or (1.0, 1.0, 1.0))
    return [Sample(normalize_volume(img), lab, name=f"synthetic3d-s{seed}-{i:03d}",
                   spacing=spacing)
            for i, (img, lab) in enumerate(touching_cells_3d(n, size, seed, spacing=spacing))]


def _load(config: TrainConfig, path: str, labels: str, what: str, n: int, seed: int):
    if config.dims == 2:
        from ..synthetic import touching_cells

        return touching_cells(n, config.synthetic_size, seed) if path == "synthetic" \
            else _read(path, labels, what)
    spacing = parse_spacing(config.spacing)
    samples = synthetic_volumes(n, config.synthetic_size, seed, spacing) \
        if path == "synthetic" else _read_volumes(path, labels, what, config.unlabelled)
    if spacing is not None:
        for s in samples:
            s.spacing = spacing
    return samples


def load_samples(config: TrainConfig):
    """(training samples, validation samples) as normalised :class:`unetlab.data.Sample`:
    images, or (``dims`` 3) volumes with their voxel size (``spacing`` replaces the files')."""
    train = _load(config, config.data, config.labels, "data", config.synthetic_images,
                  config.synthetic_seed)
    val = []
    if config.val:
        val = _load(config, config.val, config.val_labels, "val", 2, config.synthetic_seed + 1)
    if not any((s.instances > 0).any() for s in train):
        raise UnetlabError(f"data: {config.data}: no label image contains a cell (every "
                           f"labelled pixel is background): there is nothing to learn")
    chans = {s.channels for s in train} | {s.channels for s in val}
    if len(chans) != 1:
        raise UnetlabError(f"data/val: images have different channel counts {sorted(chans)}")
    return train, val


def aspect(spacing) -> tuple[float, ...] | None:
    """``spacing`` in units of its last (x) axis, e.g. (2, 0.5, 0.5) µm → (4, 1, 1): the voxel
    size the weight map of volumes uses, so that ``sigma`` stays in x-voxels (px) as in 2D
    whatever unit a file declares. None stays None."""
    if spacing is None:
        return None
    return tuple(float(s) / float(spacing[-1]) for s in spacing)


def volume_targets(instances, spacing=None, *, w0: float, sigma: float, balance: bool):
    """:func:`unetlab.weights.training_targets` of a (Z, Y, X) volume with the voxel aspect of
    ``spacing`` (σ of Eq. 2 in x-voxels, z distances scaled by dz/dx)."""
    from ..weights import training_targets

    return training_targets(instances, w0=w0, sigma=sigma, balance=balance,
                            spacing=aspect(spacing))


def augment_spacing(samples) -> tuple[float, float, float] | None:
    """The voxel aspect the 3D augmentation uses: the per-axis median over ``samples`` (one
    :class:`unetlab.augment.Augment` serves every volume; volumes of one data set share it)."""
    import numpy as np

    sp = [s.spacing for s in samples if s.spacing is not None]
    if not sp:
        return None
    return aspect(tuple(float(v) for v in np.median(np.array(sp, dtype=np.float64), axis=0)))


def make_sampler(config: TrainConfig, train_samples, tile, out_size):
    """The training :class:`unetlab.data.TileSampler` (targets of Eq. 2, augmentation of
    Sec. 3.1 when ``config.augment``; volumes: with their voxel aspect), every sample's
    targets precomputed."""
    from ..augment import Augment
    from ..data import TileSampler
    from ..weights import training_targets

    opts = dict(w0=config.w0, sigma=config.sigma, balance=config.balance)
    if config.dims == 2:
        targets_fn = functools.partial(training_targets, **opts)
        augment = Augment(elastic_sigma=config.elastic_sigma) if config.augment else None
    else:
        targets_fn = functools.partial(volume_targets, **opts)
        augment = (Augment(elastic_sigma=config.elastic_sigma,
                           spacing=augment_spacing(train_samples)) if config.augment else None)
    return TileSampler(train_samples, tile, out_size, targets_fn, augment).precompute()


def timing_step(net, optimizer: str, tile: int, device, precision: str = "fp32",
                batch: int = 1) -> Callable[[], None]:
    """A callable doing one training step (forward, backward, optimiser update) of a copy of
    ``net`` on a random ``batch`` × ``tile``² input (volumes: ``tile`` = (z, y, x)): the unit
    of work that :func:`unetlab.hardware.fastest_threads` times. ``net`` and the RNG are left
    untouched."""
    import copy

    import torch

    from ..hardware import autocast

    size = tuple(tile) if isinstance(tile, (tuple, list)) else (tile, tile)
    with torch.random.fork_rng(devices=[]):
        probe = copy.deepcopy(net).to(device).train()
        x = torch.randn(batch, probe.in_channels, *size, device=device)
    adam = _adam_class(optimizer)
    opt = (adam(probe.parameters(), lr=1e-9) if adam
           else torch.optim.SGD(probe.parameters(), lr=1e-9, momentum=0.99))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.random.fork_rng(devices=[]), autocast(precision, device):
            logits = probe(x)
        torch.log_softmax(logits.float(), 1)[:, 1].mean().backward()
        opt.step()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    return step
