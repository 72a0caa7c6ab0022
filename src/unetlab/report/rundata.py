"""What a report shows besides the page: :class:`ReportData`, its files in
``RUN/report_data/``, ``log.csv`` and the training data named in ``config.toml``.

Run folder, as read here (everything optional)::

    RUN/config.toml            resolved training configuration (shown verbatim)
    RUN/log.csv                iteration, loss, lr, time, validation columns (val_* or any other
                               numeric column)
    RUN/report_data/           written by :func:`save_report_data` (``unetlab demo`` does):
        train.npz              image_000, instances_000[, weights_000], ...
        augmented.npz          image_000, classes_000, weights_000, ...
        prediction.npz         image, prob (P(cell), float16), instances[, gt]
        metrics.json           nested dict of metrics (scalars, lists of per-threshold dicts)
        timing.json            {stage: seconds}
        summary.json           title, headline {name: value}, notes [str]
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, atomic_write_text
from ..errors import UnetlabError

__all__ = ["ReportData", "save_report_data", "load_report_data", "read_log"]


# ============================================================================================
# data passed to the page
# ============================================================================================
@dataclass
class ReportData:
    """Arrays and numbers the report shows besides ``config.toml`` and ``log.csv``.

    Every field is optional; a section whose data are missing is omitted with a note.
    """

    title: str = "unetlab run"
    #: training images (H, W) float and their instance labels (H, W) int, same order
    train_images: list[np.ndarray] = field(default_factory=list)
    train_instances: list[np.ndarray] = field(default_factory=list)
    #: weight maps (Eq. 2) of the training images; computed by the report when absent
    weight_maps: list[np.ndarray] = field(default_factory=list)
    #: augmented samples: (image (H, W) float, classes (H, W) uint8, weights (H, W) float32)
    augmented: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    #: the predicted image (H, W), P(cell) (H, W) in [0, 1], predicted and true instances
    pred_image: np.ndarray | None = None
    pred_prob: np.ndarray | None = None
    pred_instances: np.ndarray | None = None
    gt_instances: np.ndarray | None = None
    #: nested metrics dict (scalars; lists of dicts become tables)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: wall-clock seconds per stage
    timing: dict[str, float] = field(default_factory=dict)
    #: a few headline numbers shown at the top {name: value}
    headline: dict[str, Any] = field(default_factory=dict)
    #: free-text remarks shown in the summary
    notes: list[str] = field(default_factory=list)


def _readable(path: Path) -> None:
    """Pages and pictures are for sharing: rw-r--r-- (the atomic temp file starts as 0600)."""
    try:
        os.chmod(path, 0o644)
    except OSError:
        pass


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def save_report_data(run_dir: str | os.PathLike, data: ReportData) -> Path:
    """Write ``data`` into ``run_dir/report_data/`` (npz + json, each file atomically).

    P(cell) is stored as float16 (display only). Returns the folder.
    """
    folder = Path(run_dir) / "report_data"
    folder.mkdir(parents=True, exist_ok=True)
    if data.train_images:
        arrays = {}
        for i, (img, lab) in enumerate(zip(data.train_images, data.train_instances)):
            arrays[f"image_{i:03d}"] = np.asarray(img, np.float32)
            arrays[f"instances_{i:03d}"] = np.asarray(lab, np.int32)
            if i < len(data.weight_maps):
                arrays[f"weights_{i:03d}"] = np.asarray(data.weight_maps[i], np.float32)
        _save_npz(folder / "train.npz", arrays)
    if data.augmented:
        arrays = {}
        for i, (img, cls, w) in enumerate(data.augmented):
            arrays[f"image_{i:03d}"] = np.asarray(img, np.float32)
            arrays[f"classes_{i:03d}"] = np.asarray(cls, np.uint8)
            arrays[f"weights_{i:03d}"] = np.asarray(w, np.float32)
        _save_npz(folder / "augmented.npz", arrays)
    pred = {k: v for k, v in (("image", data.pred_image), ("prob", data.pred_prob),
                              ("instances", data.pred_instances), ("gt", data.gt_instances))
            if v is not None}
    if pred:
        if "image" in pred:
            pred["image"] = np.asarray(pred["image"], np.float32)
        if "prob" in pred:
            pred["prob"] = np.asarray(pred["prob"], np.float16)
        for k in ("instances", "gt"):
            if k in pred:
                pred[k] = np.asarray(pred[k], np.int32)
        _save_npz(folder / "prediction.npz", pred)
    for name, obj in (("metrics", data.metrics), ("timing", data.timing)):
        if obj:
            atomic_write_text(folder / f"{name}.json",
                              json.dumps(obj, indent=2, default=_json_default))
    atomic_write_text(folder / "summary.json",
                      json.dumps({"title": data.title, "headline": data.headline,
                                  "notes": list(data.notes)}, indent=2, default=_json_default))
    return folder


def _indexed(z, prefix: str) -> list[np.ndarray]:
    keys = sorted(k for k in z.files if k.startswith(prefix + "_"))
    return [z[k] for k in keys]


def _read_json(path: Path, notes: list[str]) -> dict | None:
    """A JSON object from ``path``; a damaged file or one that is not an object becomes a note."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        notes.append(f"{path.name}: unreadable ({' '.join(str(e).split())[:150]})")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path.name}: expected a JSON object, found {type(data).__name__}; ignored")
        return None
    return data


def _read_npz(path: Path, notes: list[str]):
    if not path.exists():
        return None
    try:
        z = np.load(path, allow_pickle=False)
        if not hasattr(z, "files"):
            raise ValueError("not an .npz archive")
        return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any damage becomes a note, never a crash
        notes.append(f"{path.name}: unreadable ({' '.join(str(e).split())[:150]})")
        return None


class _Z(dict):
    @property
    def files(self):
        return list(self)


def load_report_data(run_dir: str | os.PathLike) -> ReportData:
    """Read ``run_dir/report_data/`` (missing or unreadable parts stay empty, with a note)."""
    folder = Path(run_dir) / "report_data"
    data = ReportData(title=Path(run_dir).name or "unetlab run")
    notes: list[str] = []
    if not folder.is_dir():
        return data
    t = _read_npz(folder / "train.npz", notes)
    if t:
        z = _Z(t)
        data.train_images = _indexed(z, "image")
        data.train_instances = _indexed(z, "instances")
        data.weight_maps = _indexed(z, "weights")
    a = _read_npz(folder / "augmented.npz", notes)
    if a:
        z = _Z(a)
        data.augmented = list(zip(_indexed(z, "image"), _indexed(z, "classes"),
                                  _indexed(z, "weights")))
    p = _read_npz(folder / "prediction.npz", notes)
    if p:
        data.pred_image = p.get("image")
        try:
            data.pred_prob = p["prob"].astype(np.float32) if "prob" in p else None
        except (TypeError, ValueError):
            notes.append("prediction.npz: 'prob' is not a numeric array; ignored")
        data.pred_instances = p.get("instances")
        data.gt_instances = p.get("gt")
    data.metrics = _read_json(folder / "metrics.json", notes) or {}
    timing = _read_json(folder / "timing.json", notes) or {}
    data.timing = {str(k): v for k, v in timing.items() if isinstance(v, (int, float))}
    s = _read_json(folder / "summary.json", notes) or {}
    data.title = str(s.get("title", data.title))
    headline = s.get("headline", {})
    data.headline = headline if isinstance(headline, dict) else {}
    extra = s.get("notes", [])
    data.notes = ([str(n) for n in extra] if isinstance(extra, list) else []) + notes
    return data


def read_log(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``log.csv`` as {column: float64 array} (non-numeric or empty cells become NaN).

    Raises :class:`UnetlabError` naming the file when it is unreadable or has no header.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise UnetlabError(f"{path}: cannot read the training log ({e})") from None
    if not rows or not rows[0]:
        raise UnetlabError(f"{path}: empty training log (no header line)")
    header = [h.strip() for h in rows[0]]
    cols: dict[str, list[float]] = {h: [] for h in header}
    for row in rows[1:]:
        if not row:
            continue
        for i, h in enumerate(header):
            try:
                cols[h].append(float(row[i]) if i < len(row) and row[i].strip() else math.nan)
            except ValueError:
                cols[h].append(math.nan)
    return {h: np.asarray(v, np.float64) for h, v in cols.items()}


def _read_config(run_dir: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


def _data_path(config: dict[str, Any], value: str) -> Path:
    """A data path named in config.toml, independent of the directory the report is made in:
    absolute paths as they are; a relative one against the working directory the run recorded
    (``cwd``), else as given."""
    p = Path(str(value)).expanduser()
    cwd = config.get("cwd")
    if not p.is_absolute() and isinstance(cwd, str) and cwd:
        return Path(cwd) / p
    return p


def _samples_from_config(config: dict[str, Any], n: int = 4, n_aug: int = 8
                         ) -> tuple[list, list, list, str | None]:
    """Training images, instances and augmented samples of a run made by ``unetlab train``,
    re-read from the data its config.toml names (the generated cells are regenerated).
    Returns (images, instances, augmented, note-or-None); never raises."""
    data = config.get("data")
    if not data:
        return [], [], [], None
    try:
        if data == "synthetic":
            from ..synthetic import touching_cells_arrays

            pairs = touching_cells_arrays(min(n, int(config.get("synthetic_images", n))),
                                          int(config.get("synthetic_size", 256)),
                                          int(config.get("synthetic_seed", 0)))
            images = [p[0] for p in pairs]
            instances = [p[1] for p in pairs]
        else:
            from ..data import read_dataset

            labels = config.get("labels") or None
            samples = read_dataset(_data_path(config, data),
                                   labels=_data_path(config, labels) if labels else None)[:n]
            images = [np.asarray(sm.image)[0] for sm in samples]
            instances = [np.asarray(sm.instances) for sm in samples]
        aug = []
        if images and config.get("augment", True):
            from ..augment import Augment
            from ..weights import training_targets

            classes, weights = training_targets(instances[0], w0=float(config.get("w0", 10.0)),
                                                sigma=float(config.get("sigma", 5.0)))
            a = Augment.paper()
            for i in range(n_aug):
                img, cls, w = a(np.asarray(images[0], np.float32)[None], classes, weights,
                                rng=np.random.default_rng([int(config.get("seed", 0)), i]))
                aug.append((img[0], cls, w))
        return images, instances, aug, None
    except Exception as e:  # noqa: BLE001 - the data may have moved; the report still builds
        return [], [], [], (f"could not re-read the training data {data!r} named in "
                            f"config.toml ({' '.join(str(e).split())[:200]})")
