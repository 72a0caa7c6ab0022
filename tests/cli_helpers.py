"""Helpers for the reliability tests: run the real CLI (in-process or as a subprocess), check
that an error is one clean line, and craft bad input files (truncated, garbled, bombs).

Every crafted file is tiny: the decompression bombs only *declare* huge sizes in a hand-written
header; no large data is ever written.
"""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable  # the .venv interpreter running pytest


# ----------------------------------------------------------------------------------- running
@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]


def run_cli(argv: Sequence[str], capsys) -> Result:
    """``unetlab.cli.main(argv)`` in this process; argparse's SystemExit becomes the code."""
    from unetlab.cli import main

    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors / --help
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    cap = capsys.readouterr()
    return Result(int(rc), cap.out, cap.err)


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a subprocess run: quiet, single-threaded, src on the path."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONWARNINGS="ignore", TQDM_DISABLE="1", MPLBACKEND="Agg")
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def run_subprocess(argv: Sequence[str], *, shell_prefix: str | None = None, timeout: float = 240,
                   cwd: str | os.PathLike | None = None) -> Result:
    """``python -m unetlab ARGV`` in a child process. ``shell_prefix`` (e.g. ``'ulimit -f 100'``)
    runs it through ``bash -c`` after that command."""
    cmd = [PYTHON, "-m", "unetlab", *[str(a) for a in argv]]
    if shell_prefix:
        import shlex

        cmd = ["bash", "-c", f"{shell_prefix}; exec {' '.join(shlex.quote(c) for c in cmd)}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cli_env(),
                       cwd=cwd or REPO)
    return Result(p.returncode, p.stdout, p.stderr)


def start_subprocess(argv: Sequence[str], *, cwd=None) -> subprocess.Popen:
    """Start ``python -m unetlab ARGV`` in its own process group (stdout/stderr piped)."""
    return subprocess.Popen([PYTHON, "-m", "unetlab", *[str(a) for a in argv]], env=cli_env(),
                            cwd=cwd or REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def kill(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if p.poll() is None:
        os.kill(p.pid, sig)


# ----------------------------------------------------------------------------------- checks
def assert_clean_error(res: Result, *names: str, problem: str | None = None) -> str:
    """rc 2, stderr exactly one line '... error: ...' mentioning every ``names`` (and the
    ``problem`` substring, case-insensitive), no traceback. Returns the line."""
    lines = res.err_lines
    assert res.rc == 2, f"exit code {res.rc}, expected 2; stderr:\n{res.err}\nstdout:\n{res.out}"
    assert "Traceback" not in res.err, res.err
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{res.err}"
    line = lines[0]
    assert "error:" in line, line
    for n in names:
        assert str(n) in line, f"{n!r} not named in: {line}"
    if problem is not None:
        assert problem.lower() in line.lower(), f"{problem!r} not in: {line}"
    return line


def looks_complete(folder: Path, names: Sequence[str] = ()) -> list[Path]:
    """Files under ``folder`` that are not hidden temporaries (what a user would take as
    output). ``names`` restricts to those file names."""
    if not folder.exists():
        return []
    out = []
    for p in folder.rglob("*"):
        if p.is_file() and not p.name.startswith(".") and ".tmp" not in p.name:
            if not names or p.name in names:
                out.append(p)
    return out


# ----------------------------------------------------------------------------------- files
def write_png(path: Path, arr: np.ndarray) -> Path:
    """Write a PNG with Pillow: (H, W) is always grey (imageio would read a (H, 3) or (H, 4)
    array as one row of RGB(A) pixels), (H, W, 3|4) colour."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(path, format="PNG")
    return path


def write_tiff(path: Path, arr: np.ndarray, **kw) -> Path:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr, **kw)
    return path


def cells(size: int = 64, seed: int = 0, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A small (image uint8, instance labels uint16) pair: a few discs on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.uint16)
    for i in range(1, n + 1):
        cy, cx = rng.integers(8, size - 8, 2)
        r = rng.integers(4, 9)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    img = (40 + 150 * (lab > 0) + rng.normal(0, 10, lab.shape)).clip(0, 255).astype(np.uint8)
    return img, lab


def write_dataset(root: Path, n: int = 2, size: int = 64, ext: str = ".png") -> Path:
    """``root/image/k.ext`` + ``root/label/k.ext`` (layout (a) of unetlab.data)."""
    for k in range(n):
        img, lab = cells(size, seed=k)
        w = write_png if ext == ".png" else write_tiff
        w(root / "image" / f"im{k}{ext}", img)
        w(root / "label" / f"im{k}{ext}", lab)
    return root


def truncated(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: max(1, int(len(data) * fraction))])
    return dst


def tiff_bomb(path: Path, width: int = 200_000, height: int = 200_000) -> Path:
    """A ~200-byte baseline TIFF whose IFD declares ``width × height`` 8-bit pixels in one
    deflate strip of 10 bytes: a decoder that trusts the header would allocate 40 GB."""
    entries = [  # tag, type (3 SHORT, 4 LONG), count, value
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 8),
        (262, 3, 1, 1), (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 10),
    ]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(entries) + 4
    body = b""
    for tag, typ, count, value in entries:
        if tag == 273:
            value = data_offset
        packed = struct.pack("<H", value) + b"\0\0" if typ == 3 else struct.pack("<I", value)
        body += struct.pack("<HHI", tag, typ, count) + packed
    raw = b"II*\0" + struct.pack("<I", ifd_offset) + struct.pack("<H", len(entries)) + body
    raw += b"\0\0\0\0" + zlib.compress(b"\0" * 64)[:10]
    path.write_bytes(raw)
    return path


def png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A PNG whose IHDR declares ``width × height`` grey pixels, with a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
           + chunk(b"IEND", b""))
    path.write_bytes(raw)
    return path


def tiny_model(path: Path, **kw) -> Path:
    """A saved unetlab model (depth 1, width 4 unless overridden)."""
    import torch

    from unetlab import UNet, save_model

    torch.manual_seed(0)
    opts = dict(depth=1, width=4)
    opts.update(kw)
    save_model(UNet(**opts), path)
    return path


# ----------------------------------------------------------------------------------- bad files
def make_bad_files(root: Path) -> dict[str, Path]:
    """Build every bad (and a few good) inputs of the matrix under ``root``; returns name → path.

    good_img/good_lab: a 64×64 image and its instance labels (PNG); good_ds: a valid dataset
    folder; model: a tiny valid model (depth 1, width 4, 1 channel).
    """
    import tifffile

    root.mkdir(parents=True, exist_ok=True)
    f: dict[str, Path] = {}
    img, lab = cells(64)
    f["good_img"] = write_png(root / "good" / "img.png", img)
    f["good_lab"] = write_png(root / "good" / "lab.png", lab.astype(np.uint8))
    f["good_prob"] = write_tiff(root / "good" / "prob.tif", (lab > 0).astype(np.float32) * 0.9)
    f["good_ds"] = write_dataset(root / "good_ds", n=2, size=64)
    f["missing"] = root / "does_not_exist.png"
    f["empty_dir"] = root / "empty_dir"
    f["empty_dir"].mkdir(exist_ok=True)
    f["empty_file"] = root / "empty.png"
    f["empty_file"].write_bytes(b"")
    f["trunc_png"] = truncated(f["good_img"], root / "trunc.png", 0.5)
    f["trunc_tif"] = truncated(write_tiff(root / "full.tif", img), root / "trunc.tif", 0.3)
    f["zero_tif"] = root / "zero.tif"
    with tifffile.TiffWriter(f["zero_tif"]) as tw:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tw.write(np.zeros((0, 0), np.uint8))
    f["nan_tif"] = write_tiff(root / "nan.tif", np.where(lab > 0, np.nan, 1.0).astype(np.float32))
    f["inf_tif"] = write_tiff(root / "inf.tif", np.where(lab > 0, np.inf, 1.0).astype(np.float32))
    f["complex_tif"] = write_tiff(root / "complex.tif", (img + 1j).astype(np.complex64))
    f["uint64_lab"] = write_tiff(root / "uint64_lab.tif",
                                 lab.astype(np.uint64) * np.uint64(2**40))
    f["bomb_tif"] = tiff_bomb(root / "bomb.tif")
    f["bomb_png"] = png_bomb(root / "bomb.png")
    f["rgb_lab"] = write_png(root / "rgb_lab.png",
                             np.stack([lab * 40, lab * 10, lab * 3], -1).astype(np.uint8))
    f["float_lab"] = write_tiff(root / "float_lab.tif", lab.astype(np.float32) * 0.37)
    f["one_class"] = write_png(root / "one_class.png", np.zeros((64, 64), np.uint8))
    f["tiny_img"] = write_png(root / "tiny" / "tiny.png", img[:3, :3])
    f["rgb_img"] = write_png(root / "rgb.png", np.stack([img] * 3, -1))
    f["not_image"] = root / "notes.png"
    f["not_image"].write_text("this is not a picture\n")
    # datasets
    d = write_dataset(root / "ds_img_no_label", n=2)
    (d / "label" / "im1.png").unlink()
    f["ds_img_no_label"] = d
    d = write_dataset(root / "ds_label_no_img", n=2)
    (d / "image" / "im1.png").unlink()
    f["ds_label_no_img"] = d
    d = write_dataset(root / "ds_shape", n=1)
    write_png(d / "label" / "im0.png", lab[:40, :50].astype(np.uint8))
    f["ds_shape"] = d
    d = write_dataset(root / "ds_rgb_label", n=1)
    write_png(d / "label" / "im0.png", np.stack([lab * 40, lab * 10, lab * 3], -1).astype(np.uint8))
    f["ds_rgb_label"] = d
    d = write_dataset(root / "ds_float_label", n=1, ext=".tif")
    write_tiff(d / "label" / "im0.tif", lab.astype(np.float32) * 0.37)
    f["ds_float_label"] = d
    d = write_dataset(root / "ds_nan", n=1, ext=".tif")
    write_tiff(d / "image" / "im0.tif", np.where(lab > 0, np.nan, 1.0).astype(np.float32))
    f["ds_nan"] = d
    d = write_dataset(root / "ds_trunc", n=1)
    truncated(d / "image" / "im0.png", d / "image" / "im0.png", 0.5)
    f["ds_trunc"] = d
    d = write_dataset(root / "ds_bomb", n=1, ext=".tif")
    tiff_bomb(d / "image" / "im0.tif")
    f["ds_bomb"] = d
    d = write_dataset(root / "ds_complex", n=1, ext=".tif")
    write_tiff(d / "image" / "im0.tif", (img + 1j).astype(np.complex64))
    f["ds_complex"] = d
    d = write_dataset(root / "ds_one_class", n=1)
    write_png(d / "label" / "im0.png", np.zeros((64, 64), np.uint8))
    f["ds_one_class"] = d
    d = write_dataset(root / "ds_tiny", n=1)
    write_png(d / "image" / "im0.png", img[:5, :5])
    write_png(d / "label" / "im0.png", np.pad(np.ones((3, 3), np.uint8), 1))  # one 3×3 cell
    f["ds_tiny"] = d
    d = write_dataset(root / "ds_channels", n=2)
    write_png(d / "image" / "im1.png", np.stack([cells(64, 1)[0]] * 3, -1))
    f["ds_channels"] = d
    # models
    f["model"] = tiny_model(root / "model.pt")
    f["model_rgb"] = tiny_model(root / "model_rgb.pt", in_channels=3)
    import torch

    obj = torch.load(f["model"], weights_only=True)
    obj["config"]["width"] = 8
    f["model_other_arch"] = root / "model_other_arch.pt"
    torch.save(obj, f["model_other_arch"])
    f["not_checkpoint"] = root / "not_checkpoint.pt"
    f["not_checkpoint"].write_text("definitely not a checkpoint\n")
    f["foreign_pt"] = root / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, f["foreign_pt"])
    f["evil_pt"] = root / "evil.pt"
    f["evil_target"] = root / "PWNED"
    torch.save({"format": "unetlab-model", "x": _Evil(str(f["evil_target"]))}, f["evil_pt"])
    # configuration files
    f["cfg_unknown"] = root / "unknown.toml"
    f["cfg_unknown"].write_text("widht = 8\n")
    f["cfg_type"] = root / "type.toml"
    f["cfg_type"].write_text('width = "eight"\n')
    f["cfg_syntax"] = root / "syntax.toml"
    f["cfg_syntax"].write_text("width = = 8\n")
    f["cfg_table"] = root / "table.toml"
    f["cfg_table"].write_text("[model]\nwidth = 8\n")
    # an output path below a regular file: mkdir/open fail with ENOTDIR even for root
    f["a_file"] = root / "a_file.txt"
    f["a_file"].write_text("x")
    f["unwritable"] = f["a_file"] / "sub"
    return f


class _Evil:
    """Unpickling this object would create (truncate) ``target``."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


# ----------------------------------------------------------------------------------- fork server
# Killing a training run at random moments needs many real processes; starting a Python with
# torch takes seconds on a loaded machine, so the children come from a fork server that has
# imported everything once. Each child runs the real CLI entry point ``unetlab.cli.main``.
PRELOAD = ["cli_helpers", "unetlab.cli", "unetlab.commands.train", "unetlab.training",
           "unetlab.data", "unetlab.augment", "unetlab.weights", "unetlab.synthetic",
           "unetlab.loss", "unetlab.checkpoint", "unetlab.predict", "unetlab.tiling",
           "unetlab.metrics", "torch.optim", "torch._dynamo", "matplotlib.figure",
           "matplotlib.backends.backend_agg", "tqdm.auto", "tomli_w"]

_CTX = None


def fork_context():
    import multiprocessing as mp

    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(PRELOAD)
    return _CTX


def cli_child(argv: list[str], die: tuple[str, int] | None = None, log: str | None = None):
    """Child process body: ``unetlab.cli.main(argv)``; exit code = its return value.

    ``die`` = (what, k) kills the process with SIGKILL at the k-th (1-based) occurrence of:
    "write": torch.save writing checkpoint.pt's temp file — half its bytes are written first;
    "rename": the rename of a complete temp file onto checkpoint.pt;
    "model": the rename onto model.pt (checkpoint.pt already replaced, model.pt still old);
    "forward": a forward pass of the network (e.g. in the middle of a prediction).
    """
    import io

    import torch

    torch.set_num_threads(1)
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    if die is not None:
        what, k = die
        count = {"n": 0}

        def hit() -> bool:
            count["n"] += 1
            return count["n"] >= k

        if what == "write":
            import tempfile

            import unetlab.training.run_folder as training

            real_save = training.atomic_torch_save

            def save(obj, path, *a, **kw):
                if Path(path).name == "checkpoint.pt" and hit():
                    buf = io.BytesIO()
                    torch.save(obj, buf)
                    fd, tmp = tempfile.mkstemp(prefix=".checkpoint.pt.", suffix=".tmp.pt",
                                               dir=Path(path).parent)
                    data = buf.getvalue()
                    os.write(fd, data[: len(data) // 2])
                    os.fsync(fd)
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_save(obj, path, *a, **kw)

            training.atomic_torch_save = save
        elif what == "forward":
            from unetlab.model import UNet

            real_forward = UNet.forward

            def forward(self, x):
                if hit():
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_forward(self, x)

            UNet.forward = forward
        else:
            target = "checkpoint.pt" if what == "rename" else "model.pt"
            real_replace = os.replace

            def replace(src, dst, *a, **kw):
                if Path(dst).name == target and hit():
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_replace(src, dst, *a, **kw)

            os.replace = replace
    from unetlab.cli import main

    sys.exit(main([str(a) for a in argv]))


def run_child(argv, die=None, kill_after: float | None = None, timeout: float = 300,
              log: str | None = None) -> int:
    """Run :func:`cli_child` in a forked child; SIGKILL it after ``kill_after`` seconds (if
    still running). Returns the exit code (negative = killed by that signal)."""
    import time

    p = fork_context().Process(target=cli_child, args=([str(a) for a in argv], die, log))
    p.start()
    if kill_after is not None:
        p.join(kill_after)
        if p.exitcode is None:
            os.kill(p.pid, signal.SIGKILL)
    t0 = time.monotonic()
    p.join(timeout)
    if p.exitcode is None:
        p.kill()
        p.join()
        raise TimeoutError(f"child {argv} still running after {time.monotonic() - t0:.0f} s")
    return p.exitcode
