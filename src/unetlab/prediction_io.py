"""Predict image files into an output folder: what ``unetlab predict`` does, as one function.

:func:`predict_files` lists the inputs (files, folders, glob patterns, ``.zarr`` folders),
resolves every output path before any work (refusing an output that is an input, two inputs
that would write the same file, and existing outputs unless ``overwrite``), then for each input
opens it lazily (:func:`unetlab.sources.open_image`), predicts the soft-max probabilities by
overlap-tile prediction (Sec. 2, Fig. 2; :func:`unetlab.predict.predict_tiled`, or Dask with
``dask=True``) straight into the output file, and optionally derives instance labels
(:func:`unetlab.postprocess.to_instances`) and overlay pictures.

Outputs for an input NAME (names sanitised, never leaving the folder; see :func:`plan_outputs`):
``NAME_prob.tif`` / ``NAME_prob.png`` / ``NAME_prob.zarr`` (P(class 1) for 2-class models,
else all K classes), ``NAME_labels.tif`` (instances), ``NAME_overlay.png`` (outlines).

A 3D model (``spatial_dims=3``, Çiçek et al. 2016) predicts each input as ONE volume (its
slices are z; normalised over the whole volume), not slice by slice: ``NAME_prob.tif`` is
(Z, Y, X) P(class 1) (all classes: (K, Z, Y, X)), ``NAME_labels.tif`` the 3D instances of
the volume, overlays one per slice (the first 16). ``tta`` averages the 16 or 48
rotations/flips the network admits. 2D models keep predicting stacks slice by slice.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .errors import UnetlabError
from .prediction_writers import MAX_OVERLAYS, PICTURE_PIXELS, predict_job
from .sources import open_image

__all__ = ["predict_files", "PredictOptions", "plan_outputs", "list_inputs", "safe_stem",
           "PICTURE_PIXELS", "MAX_OVERLAYS"]

#: Output stems are cut to this length so that NAME_overlay_z0000.png fits NAME_MAX (255).
MAX_STEM = 120
FORMATS = ("tif", "png", "zarr")
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")
#: names of the files this module writes (skipped when found among the inputs in --out)
_OUTPUT_NAME = re.compile(r"_(z\d{4}_)?(prob(_c\d+)?\.(tif|png|zarr)|labels\.tif)$|"
                          r"_overlay(_z\d{4})?\.png$")


@dataclass
class PredictOptions:
    """Every option of ``unetlab predict`` (the command-line flag in brackets).

    tta [--tta]: average the 8 rotations/flips (3D models: 16 or 48); tile [--tile]: input tile side in pixels (None:
    the largest within the memory budget); batch [--batch]: tiles per forward pass; format
    [--format]: "tif", "png" or "zarr" (None: "zarr" with Dask, else "tif"); instances
    [--instances], method [--method], threshold [--threshold] (on P(cell)), seed_h [--seed-h]
    (pixels), min_size [--min-size] (pixels): instance labels; overlays [not --no-overlay];
    device [--device]; precision [--precision]; threads [--threads] (None: by measurement);
    dask [--dask], workers [--workers], scheduler [--scheduler]; overwrite [--overwrite];
    progress [not --quiet]; close_membranes [--close-membranes]: P(cell) of a 2-class model
    through :func:`unetlab.membranes.close_membranes` before it is written (TIFF output);
    spacing [--spacing]: voxel size (dz, dy, dx) of 3D inputs for the choice of test-time
    transforms and the instances' distances (None: as each file declares it).
    """

    tta: bool = False
    tile: int | None = None
    batch: int = 1
    format: str | None = None
    instances: bool = False
    method: str = "watershed"
    threshold: float = 0.5
    seed_h: float = 2.0
    min_size: int = 16
    overlays: bool = True
    device: str | None = None
    precision: str = "auto"
    threads: int | None = None
    dask: bool = False
    workers: int | None = None
    scheduler: str | None = None
    overwrite: bool = False
    progress: bool = True
    close_membranes: bool = False
    spacing: tuple[float, float, float] | None = None

    def check(self) -> None:
        """Raise :class:`UnetlabError` (naming the flag) for a value out of range or an option
        that has no effect in this combination."""
        if self.batch < 1:
            raise UnetlabError(f"--batch: must be >= 1, got {self.batch}")
        if self.tile is not None and self.tile < 1:
            raise UnetlabError(f"--tile: must be a positive number of pixels, got {self.tile}")
        if not (math.isfinite(self.seed_h) and self.seed_h > 0):
            raise UnetlabError(f"--seed-h: must be a finite number > 0, got {self.seed_h}")
        if self.min_size < 0:
            raise UnetlabError(f"--min-size: must be >= 0, got {self.min_size}")
        if not 0.0 <= self.threshold <= 1.0:
            raise UnetlabError(f"--threshold: must be in [0, 1], got {self.threshold}")
        if self.threads is not None and self.threads < 0:
            raise UnetlabError(f"--threads: must be >= 1 (0 = choose by measurement), "
                               f"got {self.threads}")
        if self.format is None:
            self.format = "zarr" if self.dask else "tif"
        if self.format not in FORMATS:
            raise UnetlabError(f"--format: use one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.dask and self.format != "zarr":
            raise UnetlabError("--dask writes zarr: use --format zarr (or leave --format out)")
        if self.close_membranes and (self.dask or self.format != "tif"):
            raise UnetlabError("--close-membranes writes the closed map as a TIFF: leave out "
                               "--dask and --format (or use --format tif)")
        if self.spacing is not None:
            sp = tuple(self.spacing)
            if len(sp) != 3 or not all(math.isfinite(float(v)) and float(v) > 0 for v in sp):
                raise UnetlabError(f"--spacing: give three sizes > 0 (dz,dy,dx), got {sp}")
            self.spacing = tuple(float(v) for v in sp)
        if not self.dask and (self.workers is not None or self.scheduler is not None):
            flag = "--workers" if self.workers is not None else "--scheduler"
            raise UnetlabError(f"{flag} applies to Dask prediction only: add --dask")
        if self.workers is not None and self.workers < 1:
            raise UnetlabError(f"--workers: must be >= 1, got {self.workers}")
        if self.workers is not None and self.scheduler is not None:
            raise UnetlabError("--workers starts a local cluster; --scheduler uses a running "
                               "one: give only one of them")


# ----------------------------------------------------------------------------- names
def safe_stem(path: Path) -> str:
    """A file-name stem derived from ``path`` that cannot leave the output folder: only
    letters, digits and ``._+-``, no leading dots, never empty."""
    stem = Path(path).name
    for suf in (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".png", ".jpeg", ".jpg",
                ".bmp", ".zarr"):
        if stem.lower().endswith(suf):
            stem = stem[: -len(suf)]
            break
    stem = _SAFE.sub("_", stem).lstrip(".")[:MAX_STEM]
    return stem or "image"


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """Stems of ``paths``, made distinct in order with a counter (``a``, ``a_2``, ``a_3``…),
    skipping counters that another input's own stem already uses."""
    taken = {safe_stem(p) for p in paths}
    seen: set[str] = set()
    out = []
    for p in paths:
        s = base = safe_stem(p)
        n = 1
        while s in seen or (s != base and s in taken):
            n += 1
            s = f"{base}_{n}"
        seen.add(s)
        out.append(s)
    return out


def _is_zarr_folder(p: Path) -> bool:
    return p.is_dir() and (p.suffix.lower() == ".zarr" or (p / "zarr.json").exists()
                           or (p / ".zarray").exists() or (p / ".zgroup").exists())


def list_inputs(specs: Sequence[str | Path], out_dir: Path | None = None,
                log: Callable[[str], None] = print) -> list[Path]:
    """The input images of ``specs`` (files, folders, glob patterns; a zarr folder is ONE
    image). Files found in ``out_dir`` by a folder or pattern whose names are this module's
    outputs (``*_prob.tif``, ``*_labels.tif``, ``*_overlay.png``…) are skipped, with a note."""
    from .data import list_images

    found: list[Path] = []
    skipped = 0
    out_real = out_dir.resolve() if out_dir is not None and out_dir.exists() else None
    for spec in specs:
        p = Path(spec)
        if _is_zarr_folder(p) or p.is_file():
            found.append(p)
            continue
        for f in list_images(spec):
            if out_real is not None and f.resolve().parent == out_real and \
                    _OUTPUT_NAME.search(f.name):
                skipped += 1
                continue
            found.append(f)
    if skipped:
        log(f"skipped {skipped} file(s) in {out_dir} that are unetlab predict outputs")
    if not found:
        raise UnetlabError("no input images to predict (only earlier outputs were found)"
                           if skipped else "no input images given")
    return found


# ----------------------------------------------------------------------------- the plan
@dataclass
class Job:
    """One input, opened lazily, and every file it will write."""

    path: Path
    stem: str
    source: object
    outputs: list[Path] = field(default_factory=list)
    pictures: bool = False


def _outputs_of(stem: str, out_dir: Path, S: int | None, K: int, small: bool,
                opts: PredictOptions) -> list[Path]:
    """The files written for one input (S: slices of a stack, None for a 2D image)."""
    zs = [None] if S is None else list(range(S))
    names = []
    if opts.format == "png":
        classes = [None] if K == 2 else list(range(K))
        names += [f"{stem}{'' if z is None else f'_z{z:04d}'}_prob"
                  f"{'' if k is None else f'_c{k}'}.png" for k in classes for z in zs]
    else:
        names.append(f"{stem}_prob.{opts.format}")
    if small and opts.instances:
        names.append(f"{stem}_labels.tif")
    if small and opts.overlays:
        names += [f"{stem}_overlay.png"] if S is None else \
            [f"{stem}_overlay_z{z:04d}.png" for z in zs[:MAX_OVERLAYS]]
    return [out_dir / n for n in names]


def plan_outputs(inputs: Sequence[Path], out_dir: Path, in_channels: int, num_classes: int,
                 opts: PredictOptions, log: Callable[[str], None] = print, *,
                 spatial_dims: int = 2) -> list[Job]:
    """Open every input (headers only where possible) and name every output; refuse, before
    anything is written, an output that is one of the inputs and two inputs writing the same
    file. Without ``opts.overwrite``, an input whose outputs all exist (an earlier, complete
    run: files are renamed into place only when complete) is skipped with a note, and one with
    only some of them is refused. ``spatial_dims=3``: every input is one volume (its slices
    are z; instances and overlays need the whole volume within :data:`PICTURE_PIXELS`)."""
    jobs = []
    for path, stem in zip(inputs, _unique_stems(inputs)):
        src = open_image(path, in_channels)
        if src.shape[1] != in_channels:
            raise UnetlabError(f"{path}: image has {src.shape[1]} channel(s) but the model "
                               f"expects {in_channels}")
        volume = spatial_dims == 3
        small = src.shape[2] * src.shape[3] * (src.shape[0] if volume else 1) <= PICTURE_PIXELS
        outs = _outputs_of(stem, out_dir, src.shape[0] if src.stack or volume else None,
                           num_classes, small, opts)
        jobs.append(Job(path, stem, src, outs, small))
    _check_collisions(jobs)
    return [j for j in jobs if opts.overwrite or not _already_done(j, opts, log)]


def _already_done(job: Job, opts: PredictOptions, log) -> bool:
    """True (and a note) when every output of ``job`` exists; an error when only some do
    (a Dask zarr that exists is resumed, not replaced, so it does not count)."""
    if all(o.exists() for o in job.outputs):
        log(f"{job.path}: skipped, its outputs exist in {job.outputs[0].parent} (pass "
            "--overwrite to predict it again)")
        return True
    for o in job.outputs:
        if o.exists() and not (opts.dask and o.suffix == ".zarr"):
            raise UnetlabError(f"{o}: exists; pass --overwrite to replace it, or choose "
                               "another --out")
    return False


def _check_collisions(jobs: list[Job]) -> None:
    inputs = {j.path.resolve(): j.path for j in jobs}
    owner: dict[Path, Path] = {}
    for j in jobs:
        for o in j.outputs:
            real = o.resolve()
            if real in inputs:
                raise UnetlabError(f"{o}: output of {j.path} would replace the input "
                                   f"{inputs[real]}; choose another --out")
            if real in owner:
                raise UnetlabError(f"{o}: written for both {owner[real]} and {j.path}; "
                                   "rename one of them")
            owner[real] = j.path


# ----------------------------------------------------------------------------- the run
def predict_files(model, inputs: Sequence[str | Path], out_dir: str | Path,
                  options: PredictOptions | None = None, *,
                  log: Callable[[str], None] = print, **kwargs) -> list[tuple[Path, Path]]:
    """Predict every image of ``inputs`` into the folder ``out_dir``; returns the
    (input, output file) pairs written, in order.

    ``model``: a model file path or a :class:`unetlab.UNet`; ``inputs``: files, folders, glob
    patterns or zarr folders; options as :class:`PredictOptions` or keyword arguments of the
    same names (``predict_files(m, ["cells/big.tif"], "preds", tta=True, instances=True)``).
    ``log`` receives one-line notes (the thread choice, skipped files). Bad values and files
    raise :class:`UnetlabError` before anything is written.
    """
    from .checkpoint import load_model
    from .hardware import describe_precision, resolve_device, resolve_precision

    opts = options if options is not None else PredictOptions(**kwargs)
    opts.check()
    if str(out_dir).strip() == "":
        raise UnetlabError("--out: empty folder name")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UnetlabError(f"--out {out_dir}: exists and is not a folder")
    device = resolve_device(opts.device or "auto")
    net = load_model(model) if isinstance(model, (str, Path)) else model
    jobs = plan_outputs(list_inputs(inputs, out_dir, log), out_dir, int(net.in_channels),
                        int(net.num_classes), opts, log,
                        spatial_dims=int(getattr(net, "spatial_dims", 2)))
    if not jobs:
        return []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UnetlabError(f"--out {out_dir}: cannot create folder ({e.strerror or e})") from None
    if not opts.dask:
        _choose_threads(net, jobs, opts, device, log)
        log(f"precision: {describe_precision(resolve_precision(opts.precision, device), device)}")
    written = []
    for job in jobs:
        for f in predict_job(net, model, job, opts, device, log):
            written.append((job.path, f))
    return written


def _choose_threads(net, jobs: Sequence[Job], opts: PredictOptions, device, log) -> None:
    """Set torch's CPU thread count: ``opts.threads``, or the faster of 1 and all threads on
    one tile of this run (a busy machine can be much faster with one), unless the whole run is
    too short for measuring to pay (:func:`unetlab.hardware.thread_count`); one line to
    ``log``."""
    import torch

    from .hardware import MIN_STEPS_TO_MEASURE, thread_count
    from .predict import _tile_request, transforms
    from .tiling import TileGeometry, plan_tiles

    geom = TileGeometry.from_net(net)
    volume = geom.spatial_dims == 3
    ntrans = len(transforms(geom, opts.tta))
    steps, tile = 0, None
    for job in jobs:          # tile passes (one tile, one transform), as far as they matter
        if steps >= MIN_STEPS_TO_MEASURE:
            break
        S, _, H, W = job.source.shape
        shape = (S, H, W) if volume else (H, W)
        req = _tile_request(geom, opts.tile, shape, opts.batch * ntrans, None)
        plan = plan_tiles(geom, shape, req)
        tile = tile or plan.tile_in
        steps += (1 if volume else int(S)) * len(plan) * ntrans
    x = torch.zeros((1, int(net.in_channels)) + tuple(tile))
    on_cpu = device.type == "cpu" and next(net.parameters()).device.type == "cpu"
    was = net.training
    net.eval()

    def step():
        with torch.inference_mode():
            net(x)

    try:
        n, why = thread_count(opts.threads, step if on_cpu else None, device, steps=steps)
    finally:
        net.train(was)
    torch.set_num_threads(n)
    log(f"threads: {why}")
