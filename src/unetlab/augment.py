"""Data augmentation (Sec. 3.1): elastic deformation, rotation, shifts, flips, grey values.

The paper trains from very few annotated images by augmenting them: "random elastic
deformations of the training samples seem to be the key concept". Its recipe: random
displacement vectors on a coarse **3×3 grid**, each drawn from a Gaussian with **standard
deviation 10 pixels**, turned into per-pixel displacements by **bicubic interpolation**; plus
shift and rotation invariance and robustness to grey-value variations. One random transform is
applied *jointly* to the image, the class labels and the weight map.

The geometry (elastic field, rotation, shift and the resampling kernels) is in
:mod:`unetlab.elastic` (2D) and :mod:`unetlab.elastic3d` (volumes, Çiçek et al. 2016: a 3×3×3
lattice, rotation about z, flips in z too); this module draws random transforms and applies
them. Volumes: image (C, Z, Y, X) or (Z, Y, X), classes and weights (Z, Y, X).

*Grey values* (image only, after the geometry): contrast, brightness, gamma, Gaussian noise;
see :class:`Augment`.

Public API: :class:`Augment`, :class:`AugmentParams`; :func:`elastic_deform`,
:func:`random_grid`, :func:`elastic_field`, :func:`bspline_upsampling_matrix`, :func:`resample`
and :func:`make_rng` are importable from here too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from .elastic import (_coordinates, _identity_copy, bspline_upsampling_matrix,  # noqa: F401
                      elastic_deform, elastic_field, make_rng, random_grid, resample)
from .elastic3d import _axis_sigmas, coordinates_3d, resample_3d
from .errors import UnetlabError

__all__ = [
    "write_augmented",
    "elastic_deform", "random_grid", "elastic_field", "bspline_upsampling_matrix", "resample",
    "Augment", "AugmentParams", "make_rng",
]


@dataclass(frozen=True)
class AugmentParams:
    """One drawn random transform (what :meth:`Augment.sample` returns, :meth:`Augment.apply`
    applies). Geometric: ``displacements`` (2, g, g) px or None, ``angle`` degrees
    (counter-clockwise as displayed), ``shift`` (ty, tx) px (the content moves by −t),
    ``quarter_turns`` k for ``np.rot90`` and ``flip`` (left–right, after the turn); for volumes
    ``displacements`` (3, g, g, g) voxels, ``shift`` (tz, ty, tx), the angle and the quarter
    turns about z, and ``flip_z`` (top–bottom along z, after the turn). Grey:
    ``contrast`` factor, ``brightness`` offset, ``gamma`` exponent, ``noise_seed`` (the noise
    generator's seed) and ``noise_std``. Construct it with keywords.
    """
    displacements: np.ndarray | None = None
    angle: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    quarter_turns: int = 0
    flip: bool = False
    contrast: float = 1.0
    brightness: float = 0.0
    gamma: float = 1.0
    noise_seed: int | None = None
    noise_std: float = 0.0
    flip_z: bool = False

    @property
    def resamples(self) -> bool:
        """True when the transform needs interpolation (elastic, rotation or shift)."""
        return (self.displacements is not None and bool(np.any(self.displacements != 0))) \
            or self.angle % 360 != 0 or any(v != 0 for v in self.shift)


@dataclass
class Augment:
    """One random transform applied jointly to image, class labels and weight map (Sec. 3.1).

    Call: ``image, classes, weights = aug(image, classes, weights, rng=None)`` with image
    ``(C, H, W)`` float32 (normalised: about zero mean, unit standard deviation), classes
    ``(H, W)`` uint8 (255 = ignore) and weights ``(H, W)`` float32; classes or weights may be
    None. Volumes: image ``(C, Z, Y, X)`` (or ``(Z, Y, X)`` when classes or weights
    ``(Z, Y, X)`` are given; returned in the layout given) — a 3×3×3 lattice (``elastic_grid``
    per axis), rotation about z, shifts on every axis, flips also along z, one tricubic /
    nearest / trilinear resampling (:mod:`unetlab.elastic3d`). Geometry is applied to all three
    with one resampling (image bicubic, classes nearest, weights bilinear; borders mirrored),
    then flips/quarter turns exactly, then grey-value changes to the image only. ``rng``: seed
    or Generator for this call; None uses the pipeline's own generator, seeded by ``seed``.

    Parameters (each transform is applied with its probability ``p_*``):

    * ``elastic_sigma`` (px, std of each lattice displacement; 0 = off), ``elastic_grid``
      (lattice points per axis), ``p_elastic``. ``spacing`` (volumes only): voxel size
      (dz, dy, dx); the z components of displacements and shifts are scaled by dx/dz (so
      ``elastic_sigma`` and ``shift`` are in x voxels and the physical spread is isotropic).
    * ``rotation`` (degrees): angle uniform in [−rotation, +rotation]; ``p_rotation``.
    * ``shift`` (px): each axis uniform in [−shift, +shift]; ``p_shift``.
    * ``flips`` (bool): a uniformly random element of the 8 flips/quarter turns (only the
      4 that keep the shape when H ≠ W); exact, no interpolation.
    * ``contrast`` (relative): each channel scaled about its mean by a factor uniform in
      [1 − contrast, 1 + contrast]; ``brightness`` (image std units, since the image is
      normalised): offset uniform in [−brightness, +brightness]; ``gamma`` (log-range): exponent
      γ = exp(U[−gamma, gamma]) applied to the image rescaled to [0, 1] by its own min/max and
      mapped back; ``noise`` (image std units): Gaussian noise with standard deviation uniform
      in [0, noise]. Each grey-value change applied with probability ``p_grey``.

    Picklable (worker processes). Note that copies of one pipeline share the seed: give each
    worker its own ``rng`` (e.g. ``np.random.default_rng([seed, worker_id])``).
    """
    # geometry: one resampling of image, classes and weights
    elastic_sigma: float = 10.0
    elastic_grid: int = 3
    p_elastic: float = 1.0
    rotation: float = 45.0
    p_rotation: float = 1.0
    shift: float = 16.0
    p_shift: float = 1.0
    flips: bool = True
    # grey values: the image only, after the geometry
    contrast: float = 0.1
    brightness: float = 0.1
    gamma: float = 0.1
    noise: float = 0.05
    p_grey: float = 0.5
    spacing: tuple[float, float, float] | None = None

    seed: int | None = None
    _rng: np.random.Generator | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        for f in fields(self):
            if f.name in ("seed", "_rng", "flips", "elastic_grid", "spacing"):
                continue
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                    or not math.isfinite(v) or v < 0:
                raise UnetlabError(f"Augment: {f.name} must be a finite number ≥ 0, got {v!r}")
            if f.name.startswith("p_") and v > 1:
                raise UnetlabError(f"Augment: {f.name} is a probability in [0, 1], got {v!r}")
        if not isinstance(self.elastic_grid, (int, np.integer)) or self.elastic_grid < 2:
            raise UnetlabError(f"Augment: elastic_grid must be an integer ≥ 2, got "
                               f"{self.elastic_grid!r}")
        if self.spacing is not None:
            self.spacing = tuple(float(v) for v in np.ravel(self.spacing))
            if len(self.spacing) != 3:
                raise UnetlabError(f"Augment: spacing must be (dz, dy, dx), got {self.spacing}")
            _axis_sigmas(1.0, self.spacing)
        if self.contrast >= 1:
            raise UnetlabError(f"Augment: contrast must be < 1 (factor in [1 − contrast, "
                               f"1 + contrast]), got {self.contrast!r}")

    # -- presets ------------------------------------------------------------------------------
    @classmethod
    def paper(cls, seed: int | None = None) -> "Augment":
        """The paper's augmentation (Sec. 3.1): elastic 3×3 grid, σ = 10 px, every sample;
        rotations (±45° plus the 8 flips/quarter turns = every angle), shifts up to 16 px, mild
        grey-value changes. Equal to the defaults."""
        return cls(seed=seed)

    @classmethod
    def none(cls, seed: int | None = None) -> "Augment":
        """No augmentation: returns copies of the inputs."""
        return cls(elastic_sigma=0.0, rotation=0.0, shift=0.0, flips=False, contrast=0.0,
                   brightness=0.0, gamma=0.0, noise=0.0, seed=seed)

    # -- random draws -------------------------------------------------------------------------
    def _generator(self, rng) -> np.random.Generator:
        if rng is not None:
            return make_rng(rng)
        if self._rng is None:
            self._rng = make_rng(self.seed)
        return self._rng

    def sample(self, shape: tuple[int, ...], rng=None) -> AugmentParams:
        """Draw one random transform for images of spatial size ``shape = (H, W)`` (or volumes
        of ``(Z, Y, X)``).

        The number of draws from the generator is the same whatever is enabled, so a seed
        gives the same elastic field whether or not, e.g., rotation is on."""
        g = self._generator(rng)
        nd = len(shape)
        if nd not in (2, 3):
            raise UnetlabError(f"Augment: shape must be (H, W) or (Z, Y, X), got {shape}")
        h, w = int(shape[-2]), int(shape[-1])
        u = g.random(14 if nd == 2 else 15)
        grid = g.standard_normal((nd,) + (self.elastic_grid,) * nd)
        shift_u = g.uniform(-1.0, 1.0, nd)
        noise_seed = int(g.integers(0, 2 ** 63 - 1))
        scale = None if nd == 2 else _axis_sigmas(1.0, self.spacing)   # per axis, x voxels
        disp = None
        if self.elastic_sigma > 0 and u[0] < self.p_elastic:
            disp = grid * float(self.elastic_sigma) if scale is None \
                else grid * (float(self.elastic_sigma) * scale)[:, None, None, None]
        angle = float((2 * u[2] - 1) * self.rotation) \
            if self.rotation > 0 and u[1] < self.p_rotation else 0.0
        shift = (0.0,) * nd
        if self.shift > 0 and u[3] < self.p_shift:
            shift = (float(shift_u[0] * self.shift), float(shift_u[1] * self.shift)) \
                if scale is None else tuple(float(v * self.shift * c)
                                            for v, c in zip(shift_u, scale))
        k, flip, flip_z = 0, False, False
        if self.flips:
            k = int(u[4] * 4) % 4
            if h != w:
                k = 2 * (k // 2)
            flip = bool(u[5] < 0.5)
            flip_z = nd == 3 and bool(u[14] < 0.5)
        pg = self.p_grey
        contrast = 1.0 + (2 * u[7] - 1) * self.contrast if self.contrast > 0 and u[6] < pg else 1.0
        brightness = (2 * u[9] - 1) * self.brightness if self.brightness > 0 and u[8] < pg else 0.0
        gamma = math.exp((2 * u[11] - 1) * self.gamma) if self.gamma > 0 and u[10] < pg else 1.0
        noise_std = float(u[13] * self.noise) if self.noise > 0 and u[12] < pg else 0.0
        return AugmentParams(displacements=disp, angle=angle, shift=shift, quarter_turns=k,
                             flip=flip, contrast=float(contrast), brightness=float(brightness),
                             gamma=float(gamma), noise_seed=noise_seed, noise_std=noise_std,
                             flip_z=flip_z)

    # -- application --------------------------------------------------------------------------
    @staticmethod
    def coordinates(params: AugmentParams, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        """Source coordinates ``(ys, xs)`` (each (H, W) float64, px) of the geometric part
        (rotation about the centre, shift, elastic field) — see the module docstring; for a
        volume ``shape = (Z, Y, X)``, ``(zs, ys, xs)``
        (:func:`unetlab.elastic3d.coordinates_3d`)."""
        d = params.displacements
        if d is not None and np.ndim(d) != len(shape) + 1:
            raise UnetlabError(f"Augment: displacements of shape {np.shape(d)} do not fit "
                               f"{len(shape)}-D data")
        if len(shape) == 3:
            shift = tuple(params.shift) if len(params.shift) == 3 else (0.0, *params.shift)
            return coordinates_3d(shape, d, params.angle, shift)
        return _coordinates(shape, d, params.angle, params.shift)

    def apply(self, params: AugmentParams, image: np.ndarray, classes: np.ndarray | None = None,
              weights: np.ndarray | None = None):
        """Apply a drawn transform to (image, classes, weights); see the class docstring."""
        image, classes, weights, squeeze = _check_triplet(image, classes, weights)
        shape = image.shape[1:]
        arrays = [image] + [a for a in (classes, weights) if a is not None]
        orders = [3] + [o for a, o in ((classes, 0), (weights, 1)) if a is not None]
        if params.resamples:
            coords = self.coordinates(params, shape)
            arrays = (resample if len(shape) == 2 else resample_3d)(arrays, orders, *coords)
        else:
            arrays = _identity_copy(arrays, orders)
        if params.quarter_turns % 4 or params.flip or (params.flip_z and len(shape) == 3):
            arrays = [np.ascontiguousarray(_dihedral(a, params.quarter_turns, params.flip,
                                                     params.flip_z and len(shape) == 3))
                      for a in arrays]
        img = _grey(arrays[0], params)
        if squeeze:
            img = img[0]
        it = iter(arrays[1:])
        classes = next(it) if classes is not None else None
        weights = next(it) if weights is not None else None
        return img, classes, weights

    def __call__(self, image: np.ndarray, classes: np.ndarray | None = None,
                 weights: np.ndarray | None = None, rng=None):
        image, classes, weights, squeeze = _check_triplet(image, classes, weights)
        params = self.sample(image.shape[1:], rng)
        return self.apply(params, image[0] if squeeze else image, classes, weights)


def _dihedral(a: np.ndarray, k: int, flip: bool, flip_z: bool = False) -> np.ndarray:
    a = np.rot90(a, k, axes=(-2, -1))
    if flip_z:
        a = a[..., ::-1, :, :]
    return a[..., ::-1] if flip else a


def _grey(img: np.ndarray, p: AugmentParams) -> np.ndarray:
    """Grey-value changes on a (C, H, W) or (C, Z, Y, X) float32 image (in place on a fresh
    array); statistics per channel."""
    axes = tuple(range(1, img.ndim))
    if p.contrast != 1.0:
        mean = img.mean(axis=axes, keepdims=True)
        img = (img - mean) * np.float32(p.contrast) + mean
    if p.gamma != 1.0:
        lo = img.min(axis=axes, keepdims=True)
        hi = img.max(axis=axes, keepdims=True)
        span = np.where(hi > lo, hi - lo, 1).astype(img.dtype)
        img = lo + span * np.power(np.clip((img - lo) / span, 0, 1), np.float32(p.gamma))
    if p.brightness != 0.0:
        img = img + np.float32(p.brightness)
    if p.noise_std > 0:
        noise = np.random.default_rng(p.noise_seed).standard_normal(img.shape, dtype=np.float32)
        img = img + noise * np.float32(p.noise_std)
    return img.astype(np.float32, copy=False)


def _check_triplet(image, classes, weights):
    """(image (C, *spatial) float32, classes, weights float32, squeeze): 2D when classes or
    weights are (H, W) or, without them, when the image is (C, H, W); volumes otherwise.
    ``squeeze``: a (Z, Y, X) image was given (a channel axis was added)."""
    image = np.asarray(image)
    given = next((np.ndim(a) for a in (classes, weights) if a is not None), None)
    nd = image.ndim - 1 if given is None else given
    squeeze = nd == 3 and image.ndim == 3
    if squeeze:
        image = image[None]
    if nd == 2 and image.ndim != 3:
        raise UnetlabError(f"Augment: image must have shape (C, H, W), got {image.shape}")
    if nd not in (2, 3) or image.ndim != nd + 1:
        raise UnetlabError(f"Augment: image must have shape (C, H, W) or (C, Z, Y, X), got "
                           f"{image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise UnetlabError(f"Augment: image must be a float array (normalised), got "
                           f"{image.dtype}")
    if image.dtype != np.float32:
        image = image.astype(np.float32)
    hw = image.shape[1:]
    what = "H, W" if nd == 2 else "Z, Y, X"
    if classes is not None:
        classes = np.asarray(classes)
        if classes.shape != hw:
            raise UnetlabError(f"Augment: classes must have shape {hw} (the image's {what}), "
                               f"got {classes.shape}")
    if weights is not None:
        weights = np.asarray(weights)
        if weights.shape != hw:
            raise UnetlabError(f"Augment: weights must have shape {hw} (the image's {what}), "
                               f"got {weights.shape}")
        if weights.dtype != np.float32:
            weights = weights.astype(np.float32)
    return image, classes, weights, squeeze


# ----------------------------------------------------------------------------------------------
# files: what ``unetlab augment`` writes

def write_augmented(data, out, *, labels=None, n: int = 8, seed: int = 0, size: int = 256,
                    tile: int | None = None, sigma: float = 10.0, grid: int = 3,
                    rotation: float = 45.0, grey: bool = True,
                    overwrite: bool = False) -> list[Path]:
    """Augment samples of a data set the way training does and write files a person can check.

    ``data``: what :func:`unetlab.data.read_dataset` reads (with ``labels``), or ``"synthetic"``
    (touching cells of ``size`` px). ``n`` samples, ``tile``: a random N×N crop (px) of each
    image first, mirrored past the borders. ``sigma`` (px), ``grid`` (points per axis),
    ``rotation`` (degrees) and ``grey`` configure :class:`Augment` (seeded by ``seed``).
    Writes into folder ``out``: ``aug_NNN_image.tif`` (float32), ``aug_NNN_image.png`` (8-bit),
    ``aug_NNN_classes.png``, ``aug_NNN_weights.tif`` and ``grid.png``; existing files need
    ``overwrite``, inputs are never overwritten. Returns the written paths."""
    from .report.pictures import png_augment_grid, to_uint8
    from .weights import training_targets
    from .writers import check_outputs, write_png, write_tiff

    _check_options(n, size, tile, sigma, grid, rotation)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UnetlabError(f"--out: {out} exists and is not a folder")
    names = [f"aug_{i:03d}_{part}" for i in range(n)
             for part in ("image.tif", "image.png", "classes.png", "weights.tif")] + ["grid.png"]
    inputs = [x for x in (data, labels) if x is not None and str(x) != "synthetic"]
    check_outputs([out / f for f in names], inputs, overwrite)
    samples = _load_samples(data, labels, n, size, seed, tile)
    off = {} if grey else {"contrast": 0.0, "brightness": 0.0, "gamma": 0.0, "noise": 0.0}
    aug = Augment(elastic_sigma=sigma, elastic_grid=grid, rotation=rotation, seed=seed, **off)
    rng = np.random.default_rng([seed, 1])        # tile positions
    out.mkdir(parents=True, exist_ok=True)
    targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    rows = []
    for i in range(n):
        k = i % len(samples)
        s = samples[k]
        if k not in targets:
            targets[k] = training_targets(s.instances)
        image, classes, weights = s.image, *targets[k]
        if tile is not None:
            image, classes, weights = _tile([image, classes, weights], tile, rng)
        params = aug.sample(classes.shape)
        a_img, a_cls, a_w = aug.apply(params, image, classes, weights)
        stem = out / f"aug_{i:03d}"
        write_tiff(f"{stem}_image.tif", a_img)
        write_png(f"{stem}_image.png", to_uint8(a_img))
        write_png(f"{stem}_classes.png", a_cls)
        write_tiff(f"{stem}_weights.tif", a_w)
        rows.append({"original": image, "image": a_img, "classes": a_cls, "weights": a_w,
                     "title": _describe(params, s.name or f"sample {k}")})
    from .atomic import atomic_write_bytes

    atomic_write_bytes(out / "grid.png", png_augment_grid(rows))
    return [out / f for f in names]


def _check_options(n, size, tile, sigma, grid, rotation) -> None:
    if n < 1:
        raise UnetlabError(f"--n: must be at least 1, got {n}")
    if n > 1000:
        raise UnetlabError(f"--n: at most 1000 samples per run, got {n}")
    if size < 16:
        raise UnetlabError(f"--size: synthetic images must be at least 16 pixels, got {size}")
    if tile is not None and tile < 8:
        raise UnetlabError(f"--tile: must be at least 8 pixels, got {tile}")
    if not np.isfinite(sigma) or sigma < 0:
        raise UnetlabError(f"--sigma: must be a number ≥ 0 (pixels), got {sigma}")
    if grid < 2:
        raise UnetlabError(f"--grid: must be at least 2 points per axis, got {grid}")
    if not np.isfinite(rotation) or rotation < 0:
        raise UnetlabError(f"--rotation: must be a number ≥ 0 (degrees), got {rotation}")


def _load_samples(data, labels, n: int, size: int, seed: int, tile: int | None) -> list:
    samples = _read_samples(data, labels, n, size, seed)
    side = max(max(s.shape) for s in samples)
    if tile is not None and tile > max(4 * side, 64):
        raise UnetlabError(f"--tile: {tile} pixels is far larger than the images "
                           f"(largest side {side}); use at most {max(4 * side, 64)}")
    return samples


def _read_samples(data, labels, n: int, size: int, seed: int) -> list:
    if str(data) == "synthetic":
        from .synthetic import touching_cells

        if labels is not None:
            raise UnetlabError("--labels: not used with DATA=synthetic")
        return touching_cells(min(n, 4), size, seed)
    from .data import read_dataset

    samples = read_dataset(data, labels=labels)
    if not samples:
        raise UnetlabError(f"{data}: no training samples found")
    return samples


def _tile(arrays, n: int, rng: np.random.Generator):
    """A random n×n tile of every (..., H, W) array (same place), mirrored past the borders."""
    from .tiling import reflect_indices

    h, w = arrays[0].shape[-2:]
    y0 = int(rng.integers(0, max(h - n, 0) + 1))
    x0 = int(rng.integers(0, max(w - n, 0) + 1))
    iy, ix = reflect_indices(y0, y0 + n, h), reflect_indices(x0, x0 + n, w)
    return [a[..., iy, :][..., ix] for a in arrays]


def _describe(params: AugmentParams, name: str) -> str:
    d = params.displacements
    return (f"{name}\nrot {params.angle:+.0f}°+{90 * params.quarter_turns}°"
            f"{' flip' if params.flip else ''}, "
            f"max |d| {0 if d is None else np.abs(d).max():.0f} px")
