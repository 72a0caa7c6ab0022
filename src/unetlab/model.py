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
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["UNet", "GeometryError"]


class GeometryError(ValueError):
    """An input size that the network cannot take (a ``ValueError``)."""


def _norm_layer(kind: str | None, channels: int) -> nn.Module | None:
    if kind is None or kind == "none":
        return None
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        groups = math.gcd(channels, 8) or 1
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"norm must be None, 'batch', 'group' or 'instance', got {kind!r}")


class ConvBlock(nn.Sequential):
    """Two 3×3 convolutions, each followed by (optional normalisation and) ReLU (Sec. 2)."""

    def __init__(self, cin: int, cout: int, padding: int, norm: str | None):
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers.append(nn.Conv2d(c, cout, 3, padding=padding, bias=norm is None or norm == "none"))
            n = _norm_layer(norm, cout)
            if n is not None:
                layers.append(n)
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Up(nn.Module):
    """2×2 up-convolution halving the channels ("upconv"), or bilinear ×2 + 1×1 convolution."""

    def __init__(self, cin: int, cout: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode == "upconv":
            self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        elif mode == "bilinear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(cin, cout, 1),
            )
        else:
            raise ValueError(f"upsampling must be 'upconv' or 'bilinear', got {mode!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


def valid_output_size(n: int, depth: int) -> int | None:
    """Output size of an unpadded U-Net of ``depth`` poolings for an input of n pixels, or None
    when some 2×2 max pooling would see an odd size or a feature map would vanish (Sec. 2)."""
    s = n
    for _ in range(depth):
        s -= 4
        if s < 2 or s % 2:
            return None
        s //= 2
    s -= 4
    if s < 1:
        return None
    for _ in range(depth):
        s = 2 * s - 4
    return s if s >= 1 else None


def _center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dh = (x.shape[-2] - h) // 2
    dw = (x.shape[-1] - w) // 2
    return x[..., dh:dh + h, dw:dw + w]


class UNet(nn.Module):
    """A 2D U-Net (Ronneberger et al. 2015, Fig. 1).

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
        tiled prediction with it is seamless only approximately.

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
    ):
        super().__init__()
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
        if norm == "none":
            norm = None
        _norm_layer(norm, 8)  # validates the name
        if not (0.0 <= float(dropout) <= 1.0):
            raise ValueError(f"dropout must be in [0, 1], got {dropout!r}")
        if upsampling not in ("upconv", "bilinear"):
            raise ValueError(f"upsampling must be 'upconv' or 'bilinear', got {upsampling!r}")

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.depth = depth
        self.width = width
        self.padding = padding
        self.norm = norm
        self.dropout = float(dropout)
        self.upsampling = upsampling
        pad = 1 if padding == "same" else 0

        chans = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans[:-1]:
            self.down.append(ConvBlock(cin, c, pad, norm))
            cin = c
        self.bottom = ConvBlock(cin, chans[-1], pad, norm)
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(depth)):
            self.ups.append(Up(chans[i + 1], chans[i], upsampling))
            self.up_blocks.append(ConvBlock(2 * chans[i], chans[i], pad, norm))
        self.head = nn.Conv2d(chans[0], num_classes, 1)
        self.pool = nn.MaxPool2d(2, 2)
        self.drop = nn.Dropout(p=self.dropout) if self.dropout > 0 else nn.Identity()
        self.reset_parameters()

    # ------------------------------------------------------------------ construction
    @classmethod
    def paper(cls, in_channels: int = 1, num_classes: int = 2) -> "UNet":
        """The 2015 network exactly: depth 4, width 64, unpadded, up-convolutions, no norm,
        dropout 0.5 at the end of the contracting path as in the authors' released Caffe
        model (the paper only says "drop-out layers at the end of the contracting path")."""
        return cls(in_channels, num_classes, depth=4, width=64, padding="valid",
                   norm=None, dropout=0.5, upsampling="upconv")

    def config(self) -> dict[str, Any]:
        """The constructor arguments, enough to rebuild the architecture."""
        return dict(in_channels=self.in_channels, num_classes=self.num_classes,
                    depth=self.depth, width=self.width, padding=self.padding,
                    norm=self.norm, dropout=self.dropout, upsampling=self.upsampling)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "UNet":
        known = {"in_channels", "num_classes", "depth", "width", "padding", "norm",
                 "dropout", "upsampling"}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown UNet option(s): {', '.join(sorted(unknown))}")
        return cls(**config)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """He initialisation (Sec. 3): w ~ N(0, 2/N), N = incoming nodes of one neuron; b = 0."""
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                # weight shape (C_in, C_out, k, k); with stride == kernel each output pixel
                # receives exactly one input pixel per input channel.
                fan_in = m.weight.shape[0] * (m.kernel_size[0] // m.stride[0]) * (m.kernel_size[1] // m.stride[1])
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Conv2d):
                fan_in = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.zero_()

    # ------------------------------------------------------------------ geometry
    @property
    def lattice(self) -> int:
        """2^depth: the network is shift-equivariant only for shifts by multiples of this."""
        return 2 ** self.depth

    @property
    def context(self) -> int:
        """Pixels lost per side by the unpadded convolutions (92 for the paper's network);
        0 for ``padding="same"``."""
        if self.padding == "same":
            return 0
        return 6 * 2 ** self.depth - 4

    @property
    def receptive_radius(self) -> int:
        """``6·2^depth − 4`` pixels: how far the convolutions alone let one output pixel see
        into the input, per side (equals ``context`` for valid padding). Max pooling adds up to
        ``2^depth − 1`` pixels more on one side, depending on the pixel's phase on the pooling
        lattice, so the worst-case reach is ``7·2^depth − 5``; ``unetlab.tiling`` adds that
        margin to the halo of "same"-padding tiles."""
        return 6 * 2 ** self.depth - 4

    def _trace(self, n: int) -> int | None:
        """Output size for input size n, or None when n is not valid."""
        if not isinstance(n, (int,)) or n < 1:
            return None
        if self.padding == "same":
            return n if n % self.lattice == 0 else None
        return valid_output_size(n, self.depth)

    def is_valid_input_size(self, n: int) -> bool:
        """True when an input of n pixels (along one axis) passes through the network."""
        return self._trace(int(n)) is not None

    def valid_input_size(self, n: int) -> int:
        """The smallest valid input size >= n (pixels)."""
        n = max(int(n), 1)
        step = 1
        while self._trace(n) is None:
            n += step
        return n

    def _nearest_valid(self, n: int) -> tuple[int | None, int]:
        lo = None
        for m in range(int(n) - 1, 0, -1):
            if self._trace(m) is not None:
                lo = m
                break
        return lo, self.valid_input_size(int(n) + 1)

    def _invalid_message(self, n: int) -> str:
        lo, hi = self._nearest_valid(n)
        near = f"{lo} or {hi}" if lo is not None else f"{hi}"
        if self.padding == "same":
            rule = f"a multiple of {self.lattice}"
        else:
            rule = (f"≡ {self.valid_input_size(1) % self.lattice} (mod {self.lattice}) and "
                    f">= {self.valid_input_size(1)}")
        return (f"input size {n} is not valid for this U-Net (depth {self.depth}, padding "
                f"{self.padding!r}): every 2×2 max pooling needs an even size, so sizes must be "
                f"{rule}; nearest valid sizes: {near}")

    def output_size(self, n: int) -> int:
        """Output size (pixels) for an input of n pixels; raises ``ValueError`` naming the
        nearest valid sizes when n is not valid."""
        out = self._trace(int(n))
        if out is None:
            raise GeometryError(self._invalid_message(int(n)))
        return out

    # ------------------------------------------------------------------ forward
    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"UNet expects a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"UNet was built for {self.in_channels} input channel(s), "
                             f"got {x.shape[1]}")
        for n in (int(x.shape[2]), int(x.shape[3])):
            if self._trace(n) is None:
                raise GeometryError(self._invalid_message(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K, H_out, W_out) for an input (N, C, H, W)."""
        if not torch.jit.is_tracing():
            self.check_input(x)
        skips = []
        last = self.depth - 1
        for i, block in enumerate(self.down):
            x = block(x)
            if i == last:
                x = self.drop(x)
            skips.append(x)
            x = self.pool(x)
        x = self.drop(self.bottom(x))
        for up, block, skip in zip(self.ups, self.up_blocks, reversed(skips)):
            x = up(x)
            if self.padding == "valid":
                skip = _center_crop(skip, x.shape[-2], x.shape[-1])
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)

    def extra_repr(self) -> str:
        return (f"depth={self.depth}, width={self.width}, padding={self.padding!r}, "
                f"norm={self.norm!r}, dropout={self.dropout}, upsampling={self.upsampling!r}")
