"""The U-Net of Ronneberger, Fischer and Brox (MICCAI 2015, Sec. 2, Fig. 1) and its variants.

`UNet.paper()` is exactly the 2015 network: unpadded ("valid") 3×3 convolutions each followed
by ReLU, 2×2 max pooling with stride 2, 64 → 1024 channels over four poolings, 2×2 up-convolutions
that halve the channels, centre-crop + concatenation of the contracting path's feature map,
two more 3×3 convolutions, and a final 1×1 convolution to K classes: 23 convolutional layers,
31,030,658 parameters for K = 2, a 572×572 input giving a 388×388 output.

Geometry (all sizes in pixels, per spatial axis; height and width are independent):

* ``padding="valid"``: every 3×3 convolution loses one pixel per side. A size ``n`` is valid
  when every 2×2 max pooling sees an even size and every feature map stays non-empty; for depth
  4 that is ``n ≡ 12 (mod 16)``, ``n ≥ 188``, and the output is ``n − 184``. The network loses
  ``context = 6·2^depth − 4`` pixels per side (92 for the paper's network).
* ``padding="same"``: valid sizes are the multiples of ``2^depth`` and the output has the input's
  size; ``context`` is 0 but ``receptive_radius`` says how far one output pixel sees.

Calling the network on an invalid size raises ``ValueError`` naming the nearest valid sizes.

The same class builds the 3D U-Net of Çiçek, Abdulkadir, Lienkamp, Brox and Ronneberger
(MICCAI 2016) with ``spatial_dims=3`` (``UNet.cicek2016()``): 3×3×3 convolutions, 2×2×2 max
pooling and up-convolutions, batch norm before each ReLU and the channels doubled before each
pooling. Pooling may be anisotropic (e.g. ``pooling=(1, 2, 2)`` for coarse z); the geometry
functions then work per axis and take and return one size per spatial axis.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["UNet", "GeometryError"]


class GeometryError(ValueError):
    """An input size that the network cannot take (a ``ValueError``)."""


_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_UPCONV = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


def _norm_layer(kind: str | None, channels: int, dims: int = 2) -> nn.Module | None:
    if kind is None or kind == "none":
        return None
    if kind == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if kind == "group":
        groups = math.gcd(channels, 8) or 1
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"norm must be None, 'batch', 'group' or 'instance', got {kind!r}")


class ConvBlock(nn.Sequential):
    """Two 3×3 (3×3×3) convolutions, each followed by (optional normalisation and) ReLU
    (Sec. 2); ``mid`` channels after the first (Çiçek et al. double them before pooling)."""

    def __init__(self, cin: int, cout: int, padding: int, norm: str | None, dims: int = 2,
                 mid: int | None = None):
        layers: list[nn.Module] = []
        for a, b in ((cin, mid or cout), (mid or cout, cout)):
            layers.append(_CONV[dims](a, b, 3, padding=padding,
                                      bias=norm is None or norm == "none"))
            n = _norm_layer(norm, b, dims)
            if n is not None:
                layers.append(n)
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Up(nn.Module):
    """Up-convolution with kernel = stride = the pooling factors ("upconv": 2×2, or 2×2×2),
    or (bi/tri)linear up-sampling by those factors + 1×1 convolution ("bilinear")."""

    def __init__(self, cin: int, cout: int, mode: str, factors: tuple[int, ...] = (2, 2)):
        super().__init__()
        self.mode = mode
        dims = len(factors)
        if mode == "upconv":
            self.up = _UPCONV[dims](cin, cout, factors, stride=factors)
        elif mode == "bilinear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=tuple(float(f) for f in factors),
                            mode="bilinear" if dims == 2 else "trilinear", align_corners=False),
                _CONV[dims](cin, cout, 1),
            )
        else:
            raise ValueError(f"upsampling must be 'upconv' or 'bilinear', got {mode!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


def valid_output_size(n: int, depth: int, factors: tuple[int, ...] | None = None) -> int | None:
    """Output size along one axis of an unpadded U-Net for an input of n pixels, or None when
    some max pooling would see a size its factor does not divide or a feature map would vanish
    (Sec. 2). ``factors``: the pooling factor of each of the ``depth`` levels on this axis
    (default 2 everywhere, as in the paper)."""
    factors = (2,) * depth if factors is None else tuple(factors)
    s = n
    for f in factors:
        s -= 4
        if s < f or s % f:
            return None
        s //= f
    s -= 4
    if s < 1:
        return None
    for f in reversed(factors):
        s = f * s - 4
    return s if s >= 1 else None


def _center_crop(x: torch.Tensor, size) -> torch.Tensor:
    # shape arithmetic stays symbolic (no int()) so torch.jit.trace keeps it size-generic
    index = [slice(None)] * (x.dim() - len(size))
    for have, want in zip(x.shape[-len(size):], size):
        d = (have - want) // 2
        index.append(slice(d, d + want))
    return x[tuple(index)]


def _pooling_factors(pooling, depth: int, dims: int) -> tuple[tuple[int, ...], ...]:
    """``pooling`` as one factor tuple per level: an int (every axis, every level), one tuple
    per axis (every level), or one tuple per level. Factors are 1 or 2."""
    if isinstance(pooling, int):
        levels = [(pooling,) * dims] * depth
    else:
        p = [tuple(v) if isinstance(v, (tuple, list)) else v for v in pooling]
        if p and all(isinstance(v, int) for v in p):
            levels = [tuple(p)] * depth
        else:
            levels = [tuple(v) for v in p]
    if len(levels) != depth or any(len(v) != dims for v in levels) or any(
            f not in (1, 2) for v in levels for f in v):
        raise ValueError(f"pooling must be 2, one factor (1 or 2) per spatial axis, or one such "
                         f"tuple per level ({depth} levels, {dims} axes), got {pooling!r}")
    return tuple(tuple(int(f) for f in v) for v in levels)


class UNet(nn.Module):
    """A 2D or 3D U-Net (Ronneberger et al. 2015, Fig. 1; Çiçek et al. 2016, Fig. 1).

    Parameters
    ----------
    in_channels : int
        Channels of the input image (1 for greyscale).
    num_classes : int
        K, the number of output classes (channels of the final 1×1 convolution). The network
        returns logits a_k(x); the pixel-wise soft-max of Sec. 3 is applied by the loss and by
        prediction.
    depth : int
        Number of 2×2 max poolings (4 in the paper).
    width : int
        Channels of the first level (64 in the paper); level ``i`` has ``width·2^i``.
    padding : "valid" or "same"
        "valid" = unpadded convolutions as in the paper; "same" = zero-padded, output size =
        input size.
    norm : None, "batch", "group" or "instance"
        Normalisation after every 3×3 convolution (none in the paper). With "instance" the
        output depends on the tile's statistics, so overlap-tile prediction is no longer exactly
        seamless; "batch" in eval mode is.
    dropout : float in [0, 1]
        Dropout probability at the end of the contracting path (the last contracting level and
        the bottom level), Sec. 3.1's "drop-out layers at the end of the contracting path".
    upsampling : "upconv" or "bilinear"
        "upconv" = 2×2 transposed convolution, stride 2 (the paper). "bilinear" = bilinear ×2
        followed by a 1×1 convolution; its values near a tile's border use clamped neighbours, so
        tiled prediction with it is seamless only approximately. In 3D it is trilinear.
    spatial_dims : 2 or 3
        2D images (N, C, H, W) or volumes (N, C, D, H, W).
    pooling : int, one factor per axis, or one tuple per level
        Max-pooling (and up-convolution) factors, 1 or 2: ``2`` = 2×2(×2) everywhere (both
        papers); ``(1, 2, 2)`` = no pooling along z at any level (anisotropic stacks);
        ``((1, 2, 2), (2, 2, 2), ...)`` = per level.
    channels : "paper" or "doubled"
        "paper" (2015): both convolutions of level ``i`` give ``width·2^i`` channels and each
        up-convolution halves them. "doubled" (Çiçek et al. 2016, "to avoid bottlenecks"): the
        first convolution of level ``i`` gives ``width·2^i``, the second twice that (so
        channels double before pooling), the up-convolution keeps the channels and each
        synthesis level gives the channels of its skip connection.

    Weights are initialised as in Sec. 3: Gaussian with standard deviation sqrt(2/N), N the
    number of incoming nodes of one neuron (9·C_in for a 3×3 convolution, C_in for the 2×2
    up-convolution with stride 2 — each output pixel sees one input pixel per channel — and
    C_in for 1×1 convolutions); biases are 0.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 4,
        width: int = 64,
        padding: str = "valid",
        norm: str | None = None,
        dropout: float = 0.0,
        upsampling: str = "upconv",
        spatial_dims: int = 2,
        pooling=2,
        channels: str = "paper",
    ):
        super().__init__()
        _check_options(in_channels, num_classes, depth, width, padding, dropout, upsampling,
                       spatial_dims, channels)
        if norm == "none":
            norm = None
        _norm_layer(norm, 8)  # validates the name
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.depth = depth
        self.width = width
        self.padding = padding
        self.norm = norm
        self.dropout = float(dropout)
        self.upsampling = upsampling
        self.spatial_dims = spatial_dims
        self.pools = _pooling_factors(pooling, depth, spatial_dims)
        self.channels = channels
        self._build()
        self.reset_parameters()

    def _build(self) -> None:
        pad, dims, norm = (1 if self.padding == "same" else 0), self.spatial_dims, self.norm
        level = [self.width * 2 ** i for i in range(self.depth + 1)]
        doubled = self.channels == "doubled"
        outs = [2 * c for c in level] if doubled else level     # channels leaving each level
        self.down = nn.ModuleList()
        cin = self.in_channels
        for i in range(self.depth):
            self.down.append(ConvBlock(cin, outs[i], pad, norm, dims, mid=level[i]))
            cin = outs[i]
        self.bottom = ConvBlock(cin, outs[-1], pad, norm, dims, mid=level[-1])
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        below = outs[-1]
        for i in reversed(range(self.depth)):
            up = below if doubled else outs[i]
            self.ups.append(Up(below, up, self.upsampling, self.pools[i]))
            self.up_blocks.append(ConvBlock(outs[i] + up, outs[i], pad, norm, dims))
            below = outs[i]
        self.head = _CONV[dims](outs[0], self.num_classes, 1)
        self.pool_layers = nn.ModuleList(_POOL[dims](f, f) for f in self.pools)
        self.drop = nn.Dropout(p=self.dropout) if self.dropout > 0 else nn.Identity()

    # ------------------------------------------------------------------ construction
    @classmethod
    def paper(cls, in_channels: int = 1, num_classes: int = 2) -> "UNet":
        """The 2015 network exactly: depth 4, width 64, unpadded, up-convolutions, no norm,
        dropout 0.5 at the end of the contracting path as in the authors' released Caffe
        model (the paper only says "drop-out layers at the end of the contracting path")."""
        return cls(in_channels, num_classes, depth=4, width=64, padding="valid",
                   norm=None, dropout=0.5, upsampling="upconv")

    @classmethod
    def cicek2016(cls, in_channels: int = 3, num_classes: int = 3, pooling=2) -> "UNet":
        """The 3D U-Net of Çiçek et al. (MICCAI 2016, Sec. 2): 3×3×3 unpadded convolutions,
        batch norm before each ReLU, three 2×2×2 max poolings, channels doubled before each
        pooling (32, 64 | 64, 128 | 128, 256 | 256, 512), 2×2×2 up-convolutions, 1×1×1 output
        convolution; a 132×132×116 tile (x, y, z) gives 44×44×28. With 3 input channels and
        3 classes it has 19,073,187 trainable parameters: 19,067,616 convolution weights,
        899 biases (up-convolutions and the output layer; a convolution followed by batch
        norm has no bias, the norm's shift replaces it) and 4,672 batch-norm scales and
        shifts. The paper's 19,069,955 is the same weights plus one bias per 3×3×3
        convolution channel (2,336) and the output layer's 3: it counts convolution biases
        instead of batch-norm parameters and no up-convolution biases."""
        return cls(in_channels, num_classes, depth=3, width=32, padding="valid",
                   norm="batch", dropout=0.0, upsampling="upconv", spatial_dims=3,
                   pooling=pooling, channels="doubled")

    def config(self) -> dict[str, Any]:
        """The constructor arguments, enough to rebuild the architecture."""
        cfg = dict(in_channels=self.in_channels, num_classes=self.num_classes,
                   depth=self.depth, width=self.width, padding=self.padding,
                   norm=self.norm, dropout=self.dropout, upsampling=self.upsampling)
        if self.spatial_dims != 2 or self.channels != "paper" or any(
                f != 2 for v in self.pools for f in v):
            cfg.update(spatial_dims=self.spatial_dims, channels=self.channels,
                       pooling=[list(v) for v in self.pools])
        return cfg

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "UNet":
        known = {"in_channels", "num_classes", "depth", "width", "padding", "norm",
                 "dropout", "upsampling", "spatial_dims", "pooling", "channels"}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown UNet option(s): {', '.join(sorted(unknown))}")
        return cls(**config)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """He initialisation (Sec. 3): w ~ N(0, 2/N), N = incoming nodes of one neuron; b = 0."""
        for m in self.modules():
            if isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
                # weight shape (C_in, C_out, *k); with stride == kernel each output pixel
                # receives exactly one input pixel per input channel.
                fan_in = m.weight.shape[0] * math.prod(
                    k // s for k, s in zip(m.kernel_size, m.stride))
            elif isinstance(m, (nn.Conv2d, nn.Conv3d)):
                fan_in = math.prod(m.weight.shape[1:])
            else:
                continue
            m.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
            if m.bias is not None:
                m.bias.zero_()

    # ------------------------------------------------------------------ geometry
    def _factors(self, axis: int) -> tuple[int, ...]:
        return tuple(v[axis] for v in self.pools)

    def _per_axis(self, values: tuple):
        """One value when every axis agrees (2D and isotropic 3D), else the tuple."""
        return values[0] if len(set(values)) == 1 else values

    @property
    def lattices(self) -> tuple[int, ...]:
        """Per spatial axis, the product of the pooling factors: the network is
        shift-equivariant only for shifts by multiples of it."""
        return tuple(math.prod(self._factors(a)) for a in range(self.spatial_dims))

    @property
    def lattice(self):
        """2^depth (an int) when every axis pools alike, else :attr:`lattices`."""
        return self._per_axis(self.lattices)

    @property
    def receptive_radii(self) -> tuple[int, ...]:
        """Per axis, how far the convolutions alone let one output pixel see into the input,
        per side: each 3×3 convolution at a level whose pixels span ``S`` input pixels adds
        ``S``, i.e. ``2·(2·Σ_{i<depth} S_i + S_depth)`` (``6·2^depth − 4`` for 2×2 pooling)."""
        out = []
        for a in range(self.spatial_dims):
            scales = [math.prod(self._factors(a)[:i]) for i in range(self.depth + 1)]
            out.append(2 * (2 * sum(scales[:-1]) + scales[-1]))
        return tuple(out)

    @property
    def receptive_radius(self):
        """``6·2^depth − 4`` pixels for 2×2 pooling (per axis: :attr:`receptive_radii`). Max
        pooling adds up to ``lattice − 1`` pixels more on one side, depending on the pixel's
        phase on the pooling lattice, so the worst-case reach is ``7·2^depth − 5``;
        ``unetlab.tiling`` adds that margin to the halo of "same"-padding tiles."""
        return self._per_axis(self.receptive_radii)

    @property
    def contexts(self) -> tuple[int, ...]:
        """Per axis, pixels lost per side by the unpadded convolutions; 0 for "same"."""
        if self.padding == "same":
            return (0,) * self.spatial_dims
        return self.receptive_radii

    @property
    def context(self):
        """Pixels lost per side (92 for the paper's network; 44 for ``cicek2016``); a tuple
        when the axes differ."""
        return self._per_axis(self.contexts)

    def _trace(self, n: int, axis: int = -1) -> int | None:
        """Output size for input size n along ``axis``, or None when n is not valid there."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            return None
        axis = axis % self.spatial_dims
        if self.padding == "same":
            return n if n % self.lattices[axis] == 0 else None
        return valid_output_size(n, self.depth, self._factors(axis))

    def _sizes(self, n) -> tuple[int, ...]:
        if isinstance(n, (tuple, list)):
            if len(n) != self.spatial_dims:
                raise ValueError(f"give {self.spatial_dims} sizes (one per spatial axis), "
                                 f"got {tuple(n)}")
            return tuple(int(v) for v in n)
        return (int(n),) * self.spatial_dims

    def _result(self, n, values: tuple):
        return tuple(values) if isinstance(n, (tuple, list)) else self._per_axis(values)

    def is_valid_input_size(self, n) -> bool:
        """True when an input of n pixels (an int: on every axis; or one size per axis)
        passes through the network."""
        return all(self._trace(v, a) is not None for a, v in enumerate(self._sizes(n)))

    def valid_input_size(self, n):
        """The smallest valid input size >= n (pixels), per axis (see :meth:`output_size`
        for the int/tuple convention)."""
        out = []
        for a, v in enumerate(self._sizes(n)):
            v = max(v, 1)
            while self._trace(v, a) is None:
                v += 1
            out.append(v)
        return self._result(n, tuple(out))

    def _nearest_valid(self, n: int, axis: int) -> tuple[int | None, int]:
        lo = next((m for m in range(int(n) - 1, 0, -1) if self._trace(m, axis) is not None),
                  None)
        hi = int(n) + 1
        while self._trace(hi, axis) is None:
            hi += 1
        return lo, hi

    def _invalid_message(self, n: int, axis: int = -1) -> str:
        lo, hi = self._nearest_valid(n, axis)
        near = f"{lo} or {hi}" if lo is not None else f"{hi}"
        lat = self.lattices[axis]
        first = self._nearest_valid(1, axis)[1] if self._trace(1, axis) is None else 1
        if self.padding == "same":
            rule = f"a multiple of {lat}"
        else:
            rule = f"≡ {first % lat} (mod {lat}) and >= {first}"
        where = f" along axis {axis % self.spatial_dims}" if len(set(self.pools)) > 1 or any(
            len(set(v)) > 1 for v in self.pools) else ""
        return (f"input size {n}{where} is not valid for this U-Net (depth {self.depth}, "
                f"padding {self.padding!r}): every max pooling needs a size its factor divides, "
                f"so sizes must be {rule}; nearest valid sizes: {near}")

    def output_size(self, n):
        """Output size (pixels) for an input of n pixels; raises ``ValueError`` naming the
        nearest valid sizes when n is not valid. ``n`` is an int (the same size on every
        axis; the result is an int when all axes agree) or one size per spatial axis (the
        result is then a tuple)."""
        out = []
        for a, v in enumerate(self._sizes(n)):
            o = self._trace(v, a)
            if o is None:
                raise GeometryError(self._invalid_message(v, a))
            out.append(o)
        return self._result(n, tuple(out))

    # ------------------------------------------------------------------ forward
    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 2 + self.spatial_dims:
            axes = "(N, C, H, W)" if self.spatial_dims == 2 else "(N, C, D, H, W)"
            raise ValueError(f"UNet expects a {axes} tensor, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"UNet was built for {self.in_channels} input channel(s), "
                             f"got {x.shape[1]}")
        for a, n in enumerate(x.shape[2:]):
            if self._trace(int(n), a) is None:
                raise GeometryError(self._invalid_message(int(n), a))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K, *spatial_out) for an input (N, C, *spatial)."""
        if not torch.jit.is_tracing():
            self.check_input(x)
        skips = []
        last = self.depth - 1
        for i, (block, pool) in enumerate(zip(self.down, self.pool_layers)):
            x = self._input_block(x) if i == 0 else block(x)
            if i == last:
                x = self.drop(x)
            skips.append(x)
            x = pool(x)
        x = self.drop(self.bottom(x))
        for up, block, skip in zip(self.ups, self.up_blocks, reversed(skips)):
            x = up(x)
            if self.padding == "valid":
                skip = _center_crop(skip, x.shape[2:])
            x = block(torch.cat([skip, x], dim=1))
        return self._logits(x)

    def _input_block(self, x: torch.Tensor) -> torch.Tensor:
        """The first block; under autocast its first convolution runs in fp32: rounding the
        normalised image to bf16 (spacing 2^-6 at 2) was the largest source of bf16-vs-fp32
        differences in the probabilities (max |ΔP| 0.027 → 0.008 on ISBI slices); with one or
        a few input channels this convolution is a small part of the work."""
        block = self.down[0]
        if (x.dtype != torch.float32 or torch.jit.is_scripting() or torch.jit.is_tracing()
                or x.device.type not in ("cpu", "cuda")
                or not torch.is_autocast_enabled(x.device.type)):
            return block(x)
        first, *rest = block
        with torch.autocast(x.device.type, enabled=False):
            x = first(x)
        for layer in rest:
            x = layer(x)
        return x

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The 1×1 output convolution. Under bf16/fp16 autocast it runs in fp32 on the
        low-precision features: rounding the logits to bf16 (8-bit mantissa) alone moves a
        probability near 0.5 by up to ~1e-2; the fp32 head costs < 1 % of the forward."""
        if (x.dtype == torch.float32 or torch.jit.is_scripting() or torch.jit.is_tracing()
                or self.head.weight.dtype != torch.float32):
            return self.head(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.head(x.float())

    def extra_repr(self) -> str:
        extra = ""
        if self.spatial_dims != 2 or self.channels != "paper":
            extra = f", spatial_dims={self.spatial_dims}, channels={self.channels!r}"
        if any(f != 2 for v in self.pools for f in v):
            extra += f", pooling={self.pools}"
        return (f"depth={self.depth}, width={self.width}, padding={self.padding!r}, "
                f"norm={self.norm!r}, dropout={self.dropout}, upsampling={self.upsampling!r}"
                + extra)


def _check_options(in_channels, num_classes, depth, width, padding, dropout, upsampling,
                   spatial_dims, channels) -> None:
    if not (isinstance(in_channels, int) and in_channels >= 1):
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    if not (isinstance(num_classes, int) and num_classes >= 2):
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not (isinstance(depth, int) and 0 <= depth <= 8):
        raise ValueError(f"depth must be an integer in 0..8, got {depth!r}")
    if not (isinstance(width, int) and width >= 1):
        raise ValueError(f"width must be a positive integer, got {width!r}")
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    if not (0.0 <= float(dropout) <= 1.0):
        raise ValueError(f"dropout must be in [0, 1], got {dropout!r}")
    if upsampling not in ("upconv", "bilinear"):
        raise ValueError(f"upsampling must be 'upconv' or 'bilinear', got {upsampling!r}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if channels not in ("paper", "doubled"):
        raise ValueError(f"channels must be 'paper' or 'doubled', got {channels!r}")
