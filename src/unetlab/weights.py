"""The U-Net weight map (Ronneberger et al. 2015, Sec. 3, Eq. 2, Fig. 3c–d) and training targets.

    w(x) = w_c(x) + w0 · exp(−(d1(x) + d2(x))² / (2σ²))

* ``w_c`` balances the class frequencies (:func:`class_balance_map`).
* ``d1``/``d2`` are the distances to the nearest and second-nearest cell; the term is large in
  the thin background gaps between touching cells and forces the network to learn them
  (:func:`border_weight_map`). The paper uses w0 = 10 and σ ≈ 5 pixels.
* Touching cells are first split by a one-pixel background border computed morphologically
  (Fig. 3c, :func:`separate_instances`); the border term is then evaluated on the split cells, so
  the separation lines themselves carry the highest weights (Fig. 3d).

Conventions (every function here, any number of dimensions, distances in pixels):

* **Volumes** (Z, Y, X) work like images (face neighbours: 6 in 3D instead of 4). Anisotropic
  voxels (Çiçek et al. 2016 train on stacks with coarser z) are handled by ``spacing=(dz, dy,
  dx)`` in physical units: distances and σ are then in the same units (default: 1 per axis =
  pixels, so 2D calls are unchanged). The separation and the class balance count voxels and need
  no spacing (every voxel has the same volume).

* **Instance images** are integer arrays: 0 = background, i > 0 = pixels of instance i,
  negative = unlabelled/ignored (the loss ignores them; Cell Tracking Challenge data are only
  partially annotated). An id that appears in several pieces is *one* instance. ``ignore_label``
  (where a function takes it) names one more id that means "ignored" (e.g. 255).
* **Class images** (what the loss sees) are ``uint8``: 0 = background (incl. separation borders),
  1 = cell, :data:`IGNORE_INDEX` = 255 = ignored.
* Binary masks (ISBI 2012 labels: cells white, membranes black) become instances as the
  4-connected components of the foreground (:func:`instances_from_mask`, :func:`as_instances`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import UnetlabError

__all__ = [
    "IGNORE_INDEX", "border_weight_map", "class_balance_map", "weight_map", "separate_instances",
    "instances_from_mask", "as_instances", "training_targets", "border_radius",
    "write_weight_map", "sparsify",
]

IGNORE_INDEX = 255
"""Value of ignored pixels in class-label images (``uint8``), for the loss's ``ignore_index``."""

#: default absolute error allowed on the border term by the windowed distance transforms
DEFAULT_TOL = 1e-6


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _as_int_labels(a, name: str = "instances") -> np.ndarray:
    """``a`` as a signed integer array (int32 when it fits, else int64); one-line errors."""
    a = np.asarray(a)
    if a.dtype == bool:
        return a.astype(np.int32)
    if a.ndim == 0:
        raise UnetlabError(f"{name}: expected an image, got a scalar")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise UnetlabError(f"{name}: label image contains NaN or infinite values")
        if a.size and not np.array_equal(a, np.round(a)):
            raise UnetlabError(f"{name}: label image has non-integer values "
                               f"(a float image, not labels)")
    elif a.dtype.kind not in "iu":
        raise UnetlabError(f"{name}: label image must be integer, got dtype {a.dtype}")
    if a.size == 0:
        return a.astype(np.int32)
    lo, hi = a.min(), a.max()
    if lo >= np.iinfo(np.int32).min and hi <= np.iinfo(np.int32).max:
        return a.astype(np.int32, copy=False)
    if lo < np.iinfo(np.int64).min or hi > np.iinfo(np.int64).max:
        raise UnetlabError(f"{name}: label values out of the 64-bit integer range")
    return a.astype(np.int64, copy=False)


def _count_ids(inst: np.ndarray) -> int:
    """Number of distinct ids > 0."""
    p = inst[inst > 0]
    if p.size == 0:
        return 0
    if p.max() <= 4 * inst.size + 1024:
        return int(np.count_nonzero(np.bincount(p)))
    return len(np.unique(p))


def _spacing(spacing, ndim: int) -> tuple[float, ...] | None:
    """``spacing`` as ``ndim`` finite positive floats, or None for 1 per axis (pixels)."""
    if spacing is None:
        return None
    if isinstance(spacing, (int, float, np.integer, np.floating)):
        spacing = (spacing,) * ndim
    try:
        sp = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise UnetlabError(f"spacing: expected {ndim} numbers (one per axis), got "
                           f"{spacing!r}") from None
    if len(sp) != ndim:
        raise UnetlabError(f"spacing: expected {ndim} numbers (one per axis of a "
                           f"{ndim}-D label image), got {len(sp)}")
    if not all(math.isfinite(v) and v > 0 for v in sp):
        raise UnetlabError(f"spacing: every voxel size must be a finite number > 0, got {sp}")
    return None if all(v == 1.0 for v in sp) else sp


def _ignored(instances: np.ndarray, ignore_label) -> np.ndarray:
    ign = instances < 0
    if ignore_label is not None:
        ign |= instances == ignore_label
    return ign


# --------------------------------------------------------------------------------------------
# border term
# --------------------------------------------------------------------------------------------
def border_radius(w0: float = 10.0, sigma: float = 5.0, tol: float = DEFAULT_TOL,
                  step: float = 1.0) -> float:
    """Distance (pixels, or the units of ``sigma``) beyond which an instance can be left out of
    the border term.

    At a background pixel d1 ≥ ``step``, the smallest voxel size (1 pixel; ``min(spacing)`` in
    physical units). If the second-nearest instance is farther than ``R`` then
    d1 + d2 > step + R and the true term is below w0·exp(−(step+R)²/(2σ²)); setting that equal
    to ``tol`` gives ``R = σ·sqrt(2·ln(w0/tol)) − step``. Any instance within ``R`` of a pixel
    lies in a window of its bounding box grown by ``ceil(R / spacing)`` voxels per axis, where
    its distance is computed exactly; so restricting each instance's distance transform to that
    window (or dropping distances above ``R``) changes the term by at most ``tol`` (the term is
    set to 0 where fewer than two instances are within reach).
    w0 = 10, σ = 5, tol = 1e-6 → R ≈ 27.4 px. ``tol <= 0`` → ``inf`` (full transforms).
    """
    if tol <= 0:
        return math.inf
    if w0 <= tol:
        return 0.0
    return max(0.0, sigma * math.sqrt(2.0 * math.log(w0 / tol)) - step)


def _nearest_two(instances: np.ndarray, radius: float, spacing: tuple[float, ...] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the smallest and second-smallest Euclidean distance (float64, units of
    ``spacing``) to the ids > 0, each instance's transform limited to its bounding box grown by
    ``ceil(radius / spacing[axis])`` voxels per axis (``inf`` where not reached)."""
    shape = instances.shape
    pos = np.where(instances > 0, instances, 0)
    if pos.size and pos.max() > 4 * pos.size + 1024:        # sparse huge ids: compact them
        m = pos > 0
        pos = np.zeros(shape, np.int64)
        pos[m] = np.unique(instances[m], return_inverse=True)[1] + 1
    d1 = np.full(shape, np.inf)
    d2 = np.full(shape, np.inf)
    steps = (1.0,) * len(shape) if spacing is None else spacing
    grow = None if math.isinf(radius) else [int(math.ceil(radius / st)) for st in steps]
    for k, box in enumerate(ndimage.find_objects(pos), start=1):
        if box is None:
            continue
        if grow is None:
            win = tuple(slice(0, n) for n in shape)
        else:
            win = tuple(slice(max(0, s.start - g), min(n, s.stop + g))
                        for s, n, g in zip(box, shape, grow))
        d = ndimage.distance_transform_edt(pos[win] != k, sampling=spacing)
        w1 = d1[win]
        w2 = d2[win]
        # running two smallest: new d2 = min(d2, max(d1, d)); new d1 = min(d1, d)
        np.minimum(w2, np.maximum(w1, d), out=w2)
        np.minimum(w1, d, out=w1)
    return d1, d2


def border_weight_map(instances, w0: float = 10.0, sigma: float = 5.0, *,
                      tol: float = DEFAULT_TOL, spacing=None, method: str = "auto"
                      ) -> np.ndarray:
    """The border term of Eq. 2: ``w0·exp(−(d1+d2)²/(2σ²))`` at background pixels; float32.

    ``instances``: integer instance image (any shape: (H, W), or a (Z, Y, X) volume); 0 =
    background, < 0 = ignored (not an instance: distances are measured to labelled voxels only,
    so a sparsely annotated volume, :func:`sparsify`, uses its annotated voxels only). d_i(x) is
    the Euclidean distance from x to the nearest pixel of instance i, as
    ``scipy.ndimage.distance_transform_edt(instances != i, sampling=spacing)``; d1 ≤ d2 the two
    smallest over all instances. ``spacing``: voxel size per axis, e.g. (dz, dy, dx) in µm;
    ``sigma`` and the distances are then in those units (default: pixels). The result is 0 on
    instance pixels and ignored pixels, and all 0 with fewer than two instances. An id in
    several pieces is one instance.

    Fast: instances farther than :func:`border_radius` (≈ 27 px for w0 = 10, σ = 5) are left
    out, which bounds the absolute error by ``tol`` (default 1e-6, about the float32 resolution
    of values near w0); ``tol=0`` is exact. ``method``: "windows" — each instance's distance
    transform covers only its bounding box grown by that radius (per axis divided by the voxel
    size); "separable" — one pass per axis keeping the two nearest instances per voxel
    (:mod:`unetlab._nearest_two`; in a volume the windows would cover most of it); "auto" (default)
    — windows for 2D images, separable for volumes.
    """
    inst = _as_int_labels(instances)
    if sigma <= 0:
        raise UnetlabError(f"sigma must be > 0, got {sigma}")
    sp = _spacing(spacing, inst.ndim)
    out = np.zeros(inst.shape, np.float32)
    ids = _count_ids(inst)
    if ids < 2 or w0 == 0:
        return out
    step = 1.0 if sp is None else min(sp)
    radius = border_radius(abs(w0), sigma, tol, step)
    if method not in ("auto", "windows", "separable"):
        raise UnetlabError(f"method must be 'auto', 'windows' or 'separable', got {method!r}")
    if method == "separable" or (method == "auto" and inst.ndim >= 3):
        from ._nearest_two import nearest_two

        d1, d2 = nearest_two(inst, radius, sp)
    else:
        d1, d2 = _nearest_two(inst, radius, sp)
    bg = inst == 0
    s = d1[bg]
    s += d2[bg]
    s *= s
    s *= -1.0 / (2.0 * sigma * sigma)
    np.exp(s, out=s)
    s *= w0
    out[bg] = s
    return out


# --------------------------------------------------------------------------------------------
# class balance
# --------------------------------------------------------------------------------------------
def class_balance_map(labels, ignore_label=None) -> np.ndarray:
    """Class-balancing weights w_c (Eq. 2), float32, same shape as ``labels``.

    ``labels``: integer class image. Ignored pixels: negative values and ``ignore_label`` (e.g.
    :data:`IGNORE_INDEX` for class images); they get weight 0. With N labelled pixels, C classes
    present among them and n_c pixels of class c::

        w_c = N / (C · n_c)

    i.e. inversely proportional to the class frequency, and the mean weight over the labelled
    pixels is exactly 1 (Σ_c n_c·w_c = N). Each class carries the same total weight N/C.
    No labelled pixel → all 0.
    """
    lab = _as_int_labels(labels, "labels")
    out = np.zeros(lab.shape, np.float32)
    keep = ~_ignored(lab, ignore_label)
    vals = lab[keep]
    n = vals.size
    if n == 0:
        return out
    if vals.max() < 65536:
        counts = np.bincount(vals)
        present = counts > 0
        table = np.zeros(counts.shape, np.float64)
        table[present] = n / (np.count_nonzero(present) * counts[present])
        out[keep] = table[vals]
    else:
        u, inv, counts = np.unique(vals, return_inverse=True, return_counts=True)
        out[keep] = (n / (len(u) * counts))[inv]
    return out


# --------------------------------------------------------------------------------------------
# separation (Fig. 3c) and instances from masks
# --------------------------------------------------------------------------------------------
def separate_instances(instances) -> np.ndarray:
    """Foreground mask with touching instances split by a one-pixel background border (Fig. 3c).

    Returns a bool array, True = cell. A pixel of instance k becomes background when one of its
    face neighbours (4-neighbourhood in 2D, 6 in 3D) belongs to another instance j with
    0 < j < k: only the larger id of a touching pair gives up its contact pixels, so the border
    is one pixel wide and nothing else is eroded. Afterwards no two different instances are
    4-adjacent (diagonal contacts are allowed), so the 4-connected components of the mask are
    the instances again (except pieces an instance thinner than 2 px may lose). Background (0)
    and ignored (< 0) pixels are False and never cause removal.
    """
    inst = _as_int_labels(instances)
    remove = np.zeros(inst.shape, bool)
    for ax in range(inst.ndim):
        lo = [slice(None)] * inst.ndim
        hi = [slice(None)] * inst.ndim
        lo[ax] = slice(0, -1)
        hi[ax] = slice(1, None)
        a, b = inst[tuple(lo)], inst[tuple(hi)]
        remove[tuple(lo)] |= (b > 0) & (b < a)
        remove[tuple(hi)] |= (a > 0) & (a < b)
    return (inst > 0) & ~remove


def instances_from_mask(mask) -> np.ndarray:
    """Instances (int32, 1..K, 0 = background) as the 4-connected (face-connected in nD)
    components of ``mask > 0``: ISBI 2012 labels are cells white (255), membranes black (0)."""
    m = np.asarray(mask)
    if m.ndim == 0:
        raise UnetlabError("mask: expected an image, got a scalar")
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    lab, _ = ndimage.label(m > 0, structure=structure, output=np.int32)
    return lab


def as_instances(label_image, ignore_label=None, path=None) -> np.ndarray:
    """Turn a label image as read from disk into an instance image (int32, -1 = ignored).

    Negative values and ``ignore_label`` become -1 (ignored); the rest follows the one label rule
    of the package, :func:`unetlab.data.label_to_instances` (2D): a binary image (values ⊆
    {0, v}, e.g. 0/255 ISBI labels, or bool) → the 4-connected components of the foreground;
    other integer images keep their ids; non-integer, colour, class images without background
    and intensity images raise :class:`UnetlabError` naming ``path``. Images of other
    dimensions: binary → face-connected components (:func:`instances_from_mask`), else the ids.
    """
    a = np.asarray(label_image)
    if a.dtype == bool:
        return instances_from_mask(a)
    lab = _as_int_labels(a, str(path) if path is not None else "labels")
    ign = _ignored(lab, ignore_label)
    if lab.ndim == 2:
        from .data.labels import label_to_instances

        out = label_to_instances(np.where(ign, 0, lab), path)
    else:
        pos_vals = np.unique(lab[lab > 0]) if lab.size else lab[:0]
        out = instances_from_mask(lab > 0) if len(pos_vals) <= 1 else lab.astype(np.int32)
    out[ign] = -1
    return out


# --------------------------------------------------------------------------------------------
# sparse annotation (Çiçek et al. 2016)
# --------------------------------------------------------------------------------------------
def sparsify(instances, every: int = 32, keep: int = 3, axis: int = 0,
             offset: int = 0) -> np.ndarray:
    """A sparsely annotated copy of a dense instance volume, as the 3D U-Net is trained
    (Çiçek et al. 2016, Sec. 1 and 3: a few annotated slices per volume).

    Along ``axis`` (default 0 = z), slice ``i`` stays annotated when
    ``(i − offset) mod every < keep`` (``keep`` consecutive slices out of every ``every``); all
    other voxels become -1 = unlabelled, which :func:`training_targets` turns into class
    :data:`IGNORE_INDEX` and weight 0 (and which never count as instances for the border term).
    Returns int32 of the same shape; voxels already < 0 stay -1.
    """
    inst = _as_int_labels(instances)
    if inst.ndim < 2:
        raise UnetlabError(f"sparsify: expected a label image or volume, got shape {inst.shape}")
    if not -inst.ndim <= axis < inst.ndim:
        raise UnetlabError(f"sparsify: axis {axis} out of range for a {inst.ndim}-D volume")
    for name, v in (("every", every), ("keep", keep)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise UnetlabError(f"sparsify: {name} must be an integer ≥ 1, got {v!r}")
    if keep > every:
        raise UnetlabError(f"sparsify: keep ({keep}) cannot exceed every ({every})")
    annotated = (np.arange(inst.shape[axis]) - int(offset)) % every < keep
    shape = [1] * inst.ndim
    shape[axis] = -1
    out = np.where(annotated.reshape(shape), inst, -1).astype(np.int32)
    out[out < 0] = -1
    return out


# --------------------------------------------------------------------------------------------
# the full map and the training targets
# --------------------------------------------------------------------------------------------
def training_targets(instances, w0: float = 10.0, sigma: float = 5.0, balance: bool = True,
                     ignore_label=None, *, tol: float = DEFAULT_TOL, spacing=None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Class image and weight map for the loss (Sec. 3): ``(classes uint8, weights float32)``.

    ``classes``: 1 = cell (the separated mask of :func:`separate_instances`), 0 = background and
    separation borders, :data:`IGNORE_INDEX` where ignored (``instances < 0`` or
    ``== ignore_label``). ``weights`` = :func:`weight_map`: w_c of the two classes (or 1 if
    ``balance`` is False) + the border term computed on the *separated* instances, 0 where ignored.
    Volumes (Z, Y, X) work the same (6-neighbour separation); ``spacing`` (dz, dy, dx) gives the
    voxel size for the border term, ``sigma`` then in the same units. Unlabelled voxels (e.g. the
    slices :func:`sparsify` leaves out) are ignored: class :data:`IGNORE_INDEX`, weight 0, not
    counted by the class balance, never an instance for the border term.
    """
    inst = _as_int_labels(instances)
    ign = _ignored(inst, ignore_label)
    fg = separate_instances(np.where(ign, -1, inst))
    classes = fg.astype(np.uint8)
    classes[ign] = IGNORE_INDEX
    if balance:
        weights = class_balance_map(classes, ignore_label=IGNORE_INDEX)
    else:
        weights = (~ign).astype(np.float32)
    if w0 != 0:
        sep = np.where(fg, inst, 0)
        sep[ign] = -1
        weights += border_weight_map(sep, w0, sigma, tol=tol, spacing=spacing)
    return classes, weights


def weight_map(labels, w0: float = 10.0, sigma: float = 5.0, balance: bool = True,
               ignore_label=None, *, tol: float = DEFAULT_TOL, spacing=None) -> np.ndarray:
    """The weight map of Eq. 2, float32, shape of ``labels``: ``w_c + w0·exp(−(d1+d2)²/(2σ²))``.

    ``labels``: a label image as ``unetlab train`` reads one (:func:`as_instances`): instance
    ids (0 = background), or a binary mask such as 0/255 whose 4-connected regions become the
    cells; < 0 (and ``ignore_label``) = ignored. ``w0`` is unitless, ``sigma`` in pixels.
    Touching instances are first split by one-pixel borders (:func:`separate_instances`); w_c
    balances the resulting cell/background classes (:func:`class_balance_map`; all 1 when
    ``balance`` is False); the border term (:func:`border_weight_map`) is evaluated on the
    separated instances, so it peaks on the separation lines. Ignored pixels get 0. Volumes
    (Z, Y, X) with ``spacing`` (dz, dy, dx; ``sigma`` in the same units) as in
    :func:`training_targets`.
    """
    return training_targets(as_instances(labels, ignore_label), w0, sigma, balance, tol=tol,
                            spacing=spacing)[1]


# --------------------------------------------------------------------------------------------
# files: what ``unetlab weights`` does
# --------------------------------------------------------------------------------------------
def write_weight_map(labels, out, *, tiff=None, page: int = 0, w0: float = 10.0,
                     sigma: float = 5.0, balance: bool = True, ignore_label=None,
                     cmap: str = "jet", overwrite: bool = False) -> dict:
    """Read a label file, compute its weight map (Eq. 2) as :func:`weight_map` does and write a
    picture of the separated cells and the weights (PNG ``out``, Fig. 3c–d) and, with ``tiff``,
    the float32 weights. ``page`` picks the slice of a stack. Outputs are checked before
    anything is computed: an input is never overwritten, an existing file needs ``overwrite``.
    Returns {"shape", "instances", "min", "max", "mean"} of the map."""
    from .data import label_to_instances, read_label_image
    from .writers import check_outputs, write_tiff

    _check_weight_options(w0, sigma, cmap)
    outputs = [Path(out)] + ([Path(tiff)] if tiff else [])
    check_outputs(outputs, [labels], overwrite)
    raw = np.asarray(read_label_image(labels))
    if raw.ndim == 3 and raw.shape[-1] <= 4 < raw.shape[0]:  # (H, W, c): grey or refused colour
        raw = label_to_instances(raw, labels)
    elif raw.ndim == 3:
        if not 0 <= page < raw.shape[0]:
            raise UnetlabError(f"--page {page}: {labels} has {raw.shape[0]} pages")
        raw = raw[page]
    inst = as_instances(raw, ignore_label, labels)
    classes, w = training_targets(inst, w0=w0, sigma=sigma, balance=balance)
    n = _count_ids(inst)
    for o in outputs:
        try:
            o.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UnetlabError(f"{o}: cannot create the folder {o.parent} "
                               f"({e.strerror or e})") from None
    from .atomic import atomic_write_bytes
    from .report.pictures import png_weight_panels

    title = f"weight map (Eq. 2): w0={w0:g}, σ={sigma:g}" + ("" if balance else ", no balance")
    atomic_write_bytes(outputs[0], png_weight_panels(classes, w, n, title, cmap))
    if tiff:
        write_tiff(tiff, w.astype(np.float32))
    return {"shape": w.shape, "instances": n, "min": float(w.min()), "max": float(w.max()),
            "mean": float(w.mean())}


def _check_weight_options(w0: float, sigma: float, cmap: str) -> None:
    if not (math.isfinite(sigma) and sigma > 0):
        raise UnetlabError(f"--sigma must be a finite number > 0, got {sigma}")
    if not (math.isfinite(w0) and w0 >= 0):
        raise UnetlabError(f"--w0 must be a finite number ≥ 0, got {w0}")
    import matplotlib

    if cmap not in matplotlib.colormaps:
        raise UnetlabError(f"--cmap: unknown matplotlib colour map {cmap!r} "
                           f"(e.g. jet, viridis, magma)")
