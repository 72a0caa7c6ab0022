"""Export a trained U-Net for use outside unetlab: TorchScript (always) and ONNX (optional extra).

The exported graph is the network's ``forward`` (Sec. 2, Fig. 1): input ``(N, C, H, W)`` float32,
output logits ``(N, K, H_out, W_out)`` float32 — or, with ``probabilities=True``, the pixel-wise
soft-max of Sec. 3, p_k(x) = exp(a_k(x)) / Σ_k' exp(a_k'(x)), over the class axis.

Height and width stay *dynamic* in both formats: any input size the network accepts works, not
only the size used for tracing. Valid sizes are the network's (``UNet.is_valid_input_size``:
for ``padding="valid"`` and depth d, ``n ≡ 4·2^d − 4 (mod 2^d)`` above the minimum, output
``n − 2·context``; for ``"same"``, multiples of ``2^d``). The exported graph does not check the
size; an invalid one gives wrong shapes or an error from the runtime, so the valid sizes and the
context are written into the file's metadata (TorchScript extra file ``unetlab.json``; ONNX
``metadata_props`` key ``unetlab``).

* TorchScript: ``torch.jit.trace`` at a small valid example size (``UNet.forward`` skips its
  size check while tracing; the centre crops are traced as shape arithmetic, so they follow the
  input size). Load with ``torch.jit.load(path)``.
* ONNX: the TorchScript-based exporter with dynamic N/H/W axes, opset 17. Needs the ``onnx``
  extra (``pip install 'unetlab[onnx]'``, i.e. ``onnx`` and ``onnxruntime``).

Files are written atomically (:mod:`unetlab.atomic`).
"""
from __future__ import annotations

import contextlib
import json
import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_path
from .checkpoint import load_model
from .errors import UnetlabError
from .model import UNet

__all__ = ["FORMATS", "export_model", "export_torchscript", "export_onnx", "example_size",
           "export_metadata"]

FORMATS = ("torchscript", "onnx", "bioimageio")
ONNX_OPSET = 17


class _WithSoftmax(nn.Module):
    """``softmax(net(x), dim=1)``: class probabilities instead of logits."""

    def __init__(self, net: UNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def example_size(net: UNet, at_least: int | None = None) -> tuple[int, ...]:
    """A small valid input shape (pixels per spatial axis) to trace with: per axis the smallest
    valid size ≥ ``at_least`` (default: 2·lattice of that axis, so that every level has a few
    pixels)."""
    want = tuple(at_least if at_least is not None else 2 * lat for lat in net.lattices)
    return tuple(net.valid_input_size(want))


def export_metadata(net: UNet, probabilities: bool = False) -> dict:
    """What a user of the exported file needs to feed it: architecture, context, valid sizes."""
    from . import __version__

    smallest = net.valid_input_size((1,) * net.spatial_dims)
    rules = []
    for lat, low, ctx in zip(net.lattices, smallest, net.contexts):
        if net.padding == "same":
            rules.append(f"multiple of {lat}")
        else:
            rules.append(f"n >= {low} and n % {lat} == {low % lat}; output n - {2 * ctx}")
    axes = "(N, C, H, W)" if net.spatial_dims == 2 else "(N, C, D, H, W)"
    return {"unetlab_version": __version__, "config": net.config(),
            "output": "probabilities" if probabilities else "logits",
            "input": f"{axes} float32, normalised as unetlab.data.normalize_image",
            "context": net.context, "lattice": net.lattice,
            "valid_sizes": rules[0] if len(set(rules)) == 1 else rules}


def _prepare(net: UNet, probabilities: bool) -> nn.Module:
    net = net.cpu().eval()
    return _WithSoftmax(net).eval() if probabilities else net


@contextlib.contextmanager
def _quiet():
    """Silence the deprecation/tracer warnings of torch.jit and the legacy ONNX exporter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _check_out(out: str | os.PathLike, overwrite: bool = True) -> Path:
    """``out`` as a writable file path: not empty, not a folder, in an existing writable
    folder, and (unless ``overwrite``) not an existing file."""
    if str(out).strip() == "":
        raise UnetlabError("--out: empty file name")
    out = Path(out)
    if out.is_dir():
        raise UnetlabError(f"{out}: is a folder, expected an output file name")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UnetlabError(f"{out}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UnetlabError(f"{out}: cannot write in folder {parent} (permission denied)")
    if out.exists() and not overwrite:
        raise UnetlabError(f"{out}: exists; pass --overwrite to replace it, or choose another "
                           "--out")
    return out


def export_torchscript(net: UNet, out: str | os.PathLike, probabilities: bool = False,
                       trace_size: int | None = None) -> Path:
    """Trace ``net`` (eval mode, CPU) and save it as TorchScript at ``out``; returns ``out``.

    ``trace_size``: input size (pixels, every axis) of the example used for tracing; default
    :func:`example_size`. The traced graph accepts other valid sizes too.
    """
    out = _check_out(out)
    module = _prepare(net, probabilities)
    x = torch.zeros(1, net.in_channels, *example_size(net, trace_size))
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(module, x, check_trace=False)
    extra = {"unetlab.json": json.dumps(export_metadata(net, probabilities))}
    try:
        buf = io.BytesIO()  # serialised in memory: torch's file writer aborts on a full disk
        with _quiet():
            torch.jit.save(traced, buf, _extra_files=extra)
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            f.write(buf.getbuffer())
    except OSError as e:
        raise UnetlabError(f"{out}: cannot write ({e.strerror or e})") from None
    return out


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(net: UNet, out: str | os.PathLike, probabilities: bool = False,
                trace_size: int | None = None, opset: int = ONNX_OPSET) -> Path:
    """Export ``net`` to ONNX at ``out`` with dynamic batch, height and width; returns ``out``.

    Raises :class:`UnetlabError` when the ``onnx`` package (the ``onnx`` extra) is missing.
    """
    try:
        import onnx
    except ImportError:
        raise UnetlabError("--format onnx: the onnx extra is missing; install it with "
                           "pip install 'unetlab[onnx]' (onnx and onnxruntime)") from None

    out = _check_out(out)
    module = _prepare(net, probabilities)
    x = torch.zeros(1, net.in_channels, *example_size(net, trace_size))
    name = "probabilities" if probabilities else "logits"
    space = ("height", "width") if net.spatial_dims == 2 else ("depth", "height", "width")
    axes = {"image": {0: "batch", **{2 + i: a for i, a in enumerate(space)}},
            name: {0: "batch", **{2 + i: f"out_{a}" for i, a in enumerate(space)}}}
    try:
        with atomic_path(out) as tmp:
            with _quiet(), torch.no_grad():
                torch.onnx.export(module, (x,), str(tmp), input_names=["image"],
                                  output_names=[name], dynamic_axes=axes, opset_version=opset,
                                  dynamo=False)
            model = onnx.load(str(tmp))
            entry = model.metadata_props.add()
            entry.key = "unetlab"
            entry.value = json.dumps(export_metadata(net, probabilities))
            onnx.save(model, str(tmp))
    except OSError as e:
        raise UnetlabError(f"{out}: cannot write ({e.strerror or e})") from None
    return out


def _check_torch_file(path: Path) -> None:
    """A file ``torch.save`` wrote starts as a zip archive (or, in old versions, a pickle):
    anything else is refused with a plain message instead of an unpickling error."""
    if not path.is_file():
        return  # load_model names the problem (missing, a folder)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise UnetlabError(f"{path}: cannot read ({e.strerror or e})") from None
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise UnetlabError(f"{path}: not a model file (not written by torch.save; expected "
                           f"model.pt, best.pt or checkpoint.pt of a unetlab run)")


def export_model(model: str | os.PathLike | UNet, out: str | os.PathLike,
                 format: str = "torchscript", probabilities: bool = False,
                 trace_size: int | None = None, overwrite: bool = True) -> Path:
    """Export ``model`` (a :class:`UNet` or a unetlab model/checkpoint file) to ``out``.

    ``format``: ``"torchscript"``, ``"onnx"`` or ``"bioimageio"`` (a bioimage.io model package,
    :func:`unetlab.bioimageio.export_bioimageio`). ``out`` may never be the model file itself;
    an existing ``out`` is replaced only when ``overwrite`` (the command line asks for
    ``--overwrite``). Bad input (not a model file, unknown format, unwritable output, missing
    onnx extra) raises :class:`UnetlabError` with one line.
    """
    if format not in FORMATS:
        raise UnetlabError(f"--format: unknown export format {format!r} "
                           f"(choose from {', '.join(FORMATS)})")
    if not isinstance(model, UNet):
        if Path(out).exists() and Path(model).exists() and Path(out).resolve() == \
                Path(model).resolve():
            raise UnetlabError(f"--out {out}: is the model file itself; choose another --out")
        _check_torch_file(Path(model))
    _check_out(out, overwrite)
    net = model if isinstance(model, UNet) else load_model(model)
    if format == "torchscript":
        return export_torchscript(net, out, probabilities, trace_size)
    if format == "bioimageio":
        from .bioimageio import export_bioimageio

        return export_bioimageio(net, out, overwrite=True)     # out checked above
    return export_onnx(net, out, probabilities, trace_size)
