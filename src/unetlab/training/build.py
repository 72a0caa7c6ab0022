"""The pieces a training run is made of, built from a :class:`TrainConfig`: the network and its
tile geometry, the optimiser and learning-rate schedule, the data and the tile sampler
(Ronneberger et al. 2015, Sec. 3), and the timing step that chooses the CPU thread count."""
from __future__ import annotations

import functools
import math
from typing import Callable

from ..errors import UnetlabError
from .config import TrainConfig

__all__ = ["build_net", "check_geometry", "make_optimizer", "lr_at", "load_samples",
           "make_sampler", "timing_step"]


def lr_at(config: TrainConfig, it: int) -> float:
    """Learning rate of step ``it`` (0-based): linear warm-up over ``warmup`` steps, then the
    decay ``schedule`` over the whole run (t = it / iterations)."""
    f = 1.0
    if config.warmup > 0 and it < config.warmup:
        f = (it + 1) / config.warmup
    t = min(max(it / max(config.iterations, 1), 0.0), 1.0)
    if config.schedule == "poly":
        f *= (1.0 - t) ** 0.9
    elif config.schedule == "cosine":
        f *= 0.5 * (1.0 + math.cos(math.pi * t))
    return config.lr * f


def build_net(config: TrainConfig, in_channels: int):
    """``(UNet, input tile side, output tile side)`` in pixels; He-initialised by the model."""
    from ..model import GeometryError, UNet

    net = UNet(in_channels=in_channels, num_classes=2, depth=config.depth, width=config.width,
               padding=config.padding, norm=None if config.norm == "none" else config.norm,
               dropout=config.dropout, upsampling=config.upsampling)
    tile = config.tile or net.valid_input_size(572)
    try:
        out = net.output_size(tile)
    except GeometryError as e:
        raise UnetlabError(f"tile (--tile): {e}") from None
    return net, tile, out


def check_geometry(config: TrainConfig) -> None:
    """Fail fast (before reading data) on a tile the network cannot take and on generated
    images smaller than the smallest valid tile; the geometry does not depend on the width,
    so a width-1 network answers."""
    from ..model import GeometryError, UNet

    probe = UNet(depth=config.depth, width=1, padding=config.padding)
    if config.tile:
        try:
            probe.output_size(config.tile)
        except GeometryError as e:
            raise UnetlabError(f"tile (--tile): {e}") from None
    uses_synthetic = "synthetic" in (config.data, config.val)
    smallest = probe.valid_input_size(1)
    if uses_synthetic and config.synthetic_size < smallest:
        raise UnetlabError(f"synthetic_size (--synthetic-size): must be at least {smallest} px "
                           f"(the smallest tile of a depth-{config.depth} network), got "
                           f"{config.synthetic_size}")


def make_optimizer(config: TrainConfig, params):
    """SGD with momentum (the paper) or Adam (``momentum`` is its beta1)."""
    import torch

    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, betas=(config.momentum, 0.999),
                            weight_decay=config.weight_decay)


def _read(path: str, labels: str, what: str):
    from ..data import read_dataset

    try:
        return read_dataset(path, labels=labels or None)
    except UnetlabError as e:
        raise UnetlabError(f"{what}: {e}") from None


def load_samples(config: TrainConfig):
    """(training samples, validation samples) as normalised :class:`unetlab.data.Sample`."""
    from ..synthetic import touching_cells

    if config.data == "synthetic":
        train = touching_cells(config.synthetic_images, config.synthetic_size,
                               config.synthetic_seed)
    else:
        train = _read(config.data, config.labels, "data")
    val = []
    if config.val == "synthetic":
        val = touching_cells(2, config.synthetic_size, config.synthetic_seed + 1)
    elif config.val:
        val = _read(config.val, config.val_labels, "val")
    if not any((s.instances > 0).any() for s in train):
        raise UnetlabError(f"data: {config.data}: no label image contains a cell (every "
                           f"labelled pixel is background): there is nothing to learn")
    chans = {s.channels for s in train} | {s.channels for s in val}
    if len(chans) != 1:
        raise UnetlabError(f"data/val: images have different channel counts {sorted(chans)}")
    return train, val


def make_sampler(config: TrainConfig, train_samples, tile: int, out_size: int):
    """The training :class:`unetlab.data.TileSampler` (targets of Eq. 2, augmentation of
    Sec. 3.1 when ``config.augment``), every sample's targets precomputed."""
    from ..augment import Augment
    from ..data import TileSampler
    from ..weights import training_targets

    targets_fn = functools.partial(training_targets, w0=config.w0, sigma=config.sigma,
                                   balance=config.balance)
    augment = Augment.paper() if config.augment else None
    return TileSampler(train_samples, tile, out_size, targets_fn, augment).precompute()


def timing_step(net, optimizer: str, tile: int, device, precision: str = "fp32",
                batch: int = 1) -> Callable[[], None]:
    """A callable doing one training step (forward, backward, optimiser update) of a copy of
    ``net`` on a random ``batch`` × ``tile``² input: the unit of work that
    :func:`unetlab.hardware.fastest_threads` times. ``net`` and the RNG are left untouched."""
    import copy

    import torch

    from ..hardware import autocast

    with torch.random.fork_rng(devices=[]):
        probe = copy.deepcopy(net).to(device).train()
        x = torch.randn(batch, probe.in_channels, tile, tile, device=device)
    opt = (torch.optim.Adam(probe.parameters(), lr=1e-9) if optimizer == "adam"
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
