"""bioimage.io model packages (model description format 0.5) of unetlab models, and back.

:func:`export_bioimageio` writes a zip package that the bioimage.io tools (bioimageio.core,
deepImageJ, ilastik, QuPath, the model zoo) run without unetlab:

* weights in two formats: ``pytorch_state_dict`` (with the architecture as a source file —
  unetlab's own ``model.py``, which needs only torch — and the network's constructor
  arguments) and ``torchscript`` (traced from the same weights);
* ``inputs``: one tensor ``raw`` with axes batch, channel, (z,) y, x; each space axis takes
  the network's valid sizes as ``{min, step}`` (for the paper network 188 + 16·n);
* preprocessing: unetlab's intensity normalisation, ``scale_range`` with the 1st and 99.8th
  percentiles per channel (Sec. "normalisation" of ``unetlab.data``);
* ``outputs``: one tensor ``probabilities`` with one channel per class, each space axis sized
  from the input's: unpadded networks crop their context themselves (size offset
  ``−2·context``, e.g. −184 for the paper network); "same"-padded networks keep the input size
  and declare the pixels their zero padding reaches as the ``halo``. Postprocessing: soft-max
  over the channels (Sec. 3, the pixel-wise soft-max);
* test input and output tensors (``.npy``), a cover image, documentation, the citation of
  Ronneberger et al. 2015 (and Çiçek et al. 2016 for 3D networks) and the licence.

:func:`load_bioimageio` reads such a package back into a :class:`~unetlab.model.UNet`
(``weights_only`` loading of the state dict; the architecture comes from the description's
kwargs, never from executing the packaged source file).

Needs the optional ``bioimageio`` extra (``pip install unetlab[bioimageio]``).
"""
from __future__ import annotations

import getpass
import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .errors import UnetlabError

PAPER_DOI = "10.1007/978-3-319-24574-4_28"
CICEK_DOI = "10.1007/978-3-319-46723-8_49"
PERCENTILES = (1.0, 99.8)


def _spec():
    try:
        from bioimageio.spec.model import v0_5
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise UnetlabError("bioimage.io export needs the bioimageio extra: "
                           "pip install 'unetlab[bioimageio]'") from e
    return v0_5


def _space_axes(net) -> list[str]:
    return ["z", "y", "x"] if net.spatial_dims == 3 else ["y", "x"]


def _smallest_input(net) -> tuple[int, ...]:
    """Per axis, the smallest valid input whose output keeps at least one pixel beyond the
    halo on each side."""
    want = tuple(2 * h + 1 for h in output_halos(net))
    return tuple(net.valid_input_size(want))


def _input_axes(spec, net):
    axes = [spec.BatchAxis(), spec.ChannelAxis(
        channel_names=[f"channel{c}" for c in range(net.in_channels)])]
    for a, name in enumerate(_space_axes(net)):
        first = _smallest_input(net)[a]
        axes.append(spec.SpaceInputAxis(id=name, size=spec.ParameterizedSize(
            min=int(first), step=int(net.lattices[a]))))
    return axes


def _output_axes(spec, net, halos: tuple[int, ...]):
    axes = [spec.BatchAxis(), spec.ChannelAxis(
        channel_names=[f"class{k}" for k in range(net.num_classes)])]
    for a, name in enumerate(_space_axes(net)):
        size = spec.SizeReference(tensor_id="raw", axis_id=name, offset=-2 * net.contexts[a])
        if halos[a]:
            axes.append(spec.SpaceOutputAxisWithHalo(id=name, size=size, halo=int(halos[a])))
        else:
            axes.append(spec.SpaceOutputAxis(id=name, size=size))
    return axes


def output_halos(net) -> tuple[int, ...]:
    """Per space axis, output pixels whose value depends on zero padding at the tile border:
    0 for unpadded networks (they crop their context themselves), the reach of the
    convolutions and poolings (``receptive_radius + lattice − 1``) for "same" padding."""
    if net.padding == "valid":
        return (0,) * net.spatial_dims
    return tuple(r + lat - 1 for r, lat in zip(net.receptive_radii, net.lattices))


def _test_input(net, image: np.ndarray | None, seed: int = 0) -> np.ndarray:
    """A (1, C, *space) float32 test input of a valid size: ``image`` (already in the model's
    channel layout, (C, *space) or (*space)) cropped or padded to a valid size, else a
    deterministic random image."""
    want = net.valid_input_size(tuple(max(64, n) for n in _smallest_input(net)))
    if image is None:
        rng = np.random.default_rng(seed)
        return rng.uniform(0, 255, (1, net.in_channels) + tuple(want)).astype(np.float32)
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == net.spatial_dims:
        a = a[None]
    if a.ndim != net.spatial_dims + 1 or a.shape[0] != net.in_channels:
        raise UnetlabError(f"test image: expected {net.in_channels} channel(s) and "
                           f"{net.spatial_dims} space axes, got shape {a.shape}")
    size = tuple(max(w, net.valid_input_size(tuple(a.shape[1:]))[i]) for i, w in
                 enumerate(want))
    pad = [(0, 0)] + [(0, max(0, s - n)) for s, n in zip(size, a.shape[1:])]
    a = np.pad(a, pad, mode="reflect")[(slice(None),) + tuple(slice(0, s) for s in size)]
    return a[None].astype(np.float32)


def reference_output(net, x: np.ndarray) -> np.ndarray:
    """What the package computes for the (1, C, *space) input ``x``: scale_range (1st/99.8th
    percentile per channel, eps 1e-6), the network, soft-max over the classes; float32."""
    import torch

    lo = np.percentile(x, PERCENTILES[0], axis=tuple(range(2, x.ndim)), keepdims=True)
    hi = np.percentile(x, PERCENTILES[1], axis=tuple(range(2, x.ndim)), keepdims=True)
    xn = ((x - lo) / (hi - lo + 1e-6)).astype(np.float32)
    with torch.no_grad():
        return torch.softmax(net.eval()(torch.from_numpy(xn)), 1).numpy().astype(np.float32)


def _cover(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A 2:1 RGB picture: the test input's first channel (mid slice for 3D) beside P(last
    class), both on the output's field of view."""
    from skimage.transform import resize

    img, prob = x[0, 0], y[0, -1]
    if img.ndim == 3:
        img, prob = img[img.shape[0] // 2], prob[prob.shape[0] // 2]
    dy, dx = [(a - b) // 2 for a, b in zip(img.shape, prob.shape)]
    img = img[dy:dy + prob.shape[0], dx:dx + prob.shape[1]]
    lo, hi = np.percentile(img, PERCENTILES)
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    side = 256
    both = np.concatenate([resize(img, (side, side)), resize(prob, (side, side))], axis=1)
    return (np.repeat(both[..., None], 3, axis=2) * 255).astype(np.uint8)


def _readme(net, name: str) -> str:
    geom = "×".join(str(v) for v in _smallest_input(net))
    return (f"# {name}\n\nA U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) exported by "
            f"unetlab.\n\n- Architecture: {net.extra_repr()}; {net.in_channels} input "
            f"channel(s), {net.num_classes} classes.\n- Input: any valid size, the smallest "
            f"being {geom} pixels, then steps of {net.lattices} pixels per axis.\n"
            f"- Output: soft-max probabilities per class; an unpadded network returns the "
            f"input minus {net.contexts} pixels per side (overlap-tile prediction, Fig. 2 of "
            f"the paper: mirror the image border to predict it).\n- Preprocessing: each channel "
            f"scaled so that its 1st/99.8th percentiles become 0/1 (not clipped).\n")


def export_bioimageio(model, out, *, name: str | None = None, description: str | None = None,
                      test_image: np.ndarray | None = None, authors: list[str] | None = None,
                      license: str = "MIT", overwrite: bool = False) -> Path:
    """Write the bioimage.io package (zip) of ``model`` (a UNet or a unetlab model file) to
    ``out``; returns its path. See the module docstring for what the package holds."""
    import torch

    from . import model as model_module
    from .atomic import atomic_path
    from .checkpoint import load_model
    import imageio.v3 as iio

    spec = _spec()
    net = model if isinstance(model, torch.nn.Module) else load_model(model)
    net = net.cpu().eval()
    out = Path(out)
    if out.exists() and not overwrite:
        raise UnetlabError(f"{out}: exists (use --overwrite to replace it)")
    name = name or "unetlab U-Net"
    x = _test_input(net, test_image)
    y = reference_output(net, x)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        np.save(d / "test_input.npy", x)
        np.save(d / "test_output.npy", y)
        torch.save(net.state_dict(), d / "weights.pt")
        traced = torch.jit.trace(net, torch.from_numpy(x), check_trace=False)
        torch.jit.save(traced, str(d / "weights_torchscript.pt"))
        (d / "unet_model.py").write_bytes(Path(model_module.__file__).read_bytes())
        (d / "README.md").write_text(_readme(net, name), encoding="utf-8")
        iio.imwrite(d / "cover.png", _cover(x, y))   # a package member, not a user output
        descr = _describe(spec, net, d, name, description, authors, license)
        from bioimageio.spec import save_bioimageio_package

        with atomic_path(out) as tmp_out:
            save_bioimageio_package(descr, output_path=Path(tmp_out))
    return out


def _describe(spec, net, d: Path, name, description, authors, license):
    import torch

    version = spec.Version(torch.__version__.split("+")[0])
    cite = [spec.CiteEntry(text="Ronneberger, Fischer, Brox: U-Net: Convolutional Networks for "
                                "Biomedical Image Segmentation. MICCAI 2015", doi=PAPER_DOI)]
    if net.spatial_dims == 3:
        cite.append(spec.CiteEntry(text="Çiçek, Abdulkadir, Lienkamp, Brox, Ronneberger: 3D "
                                        "U-Net. MICCAI 2016", doi=CICEK_DOI))
    state = spec.PytorchStateDictWeightsDescr(
        source=d / "weights.pt", pytorch_version=version,
        architecture=spec.ArchitectureFromFileDescr(source=d / "unet_model.py", callable="UNet",
                                                    kwargs=net.config()))
    script = spec.TorchscriptWeightsDescr(source=d / "weights_torchscript.pt",
                                          pytorch_version=version, parent="pytorch_state_dict")
    space = tuple(spec.AxisId(a) for a in _space_axes(net))
    pre = spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
        axes=space, min_percentile=PERCENTILES[0], max_percentile=PERCENTILES[1]))
    inp = spec.InputTensorDescr(id=spec.TensorId("raw"), axes=_input_axes(spec, net),
                                test_tensor=spec.FileDescr(source=d / "test_input.npy"),
                                preprocessing=[pre])
    outp = spec.OutputTensorDescr(
        id=spec.TensorId("probabilities"), axes=_output_axes(spec, net, output_halos(net)),
        test_tensor=spec.FileDescr(source=d / "test_output.npy"),
        postprocessing=[spec.SoftmaxDescr(kwargs=spec.SoftmaxKwargs(axis=spec.AxisId("channel")))])
    return spec.ModelDescr(
        name=name, description=description or "U-Net segmentation model exported by unetlab",
        authors=[spec.Author(name=a) for a in (authors or [getpass.getuser()])],
        cite=cite, license=license, documentation=spec.FileDescr(source=d / "README.md"),
        covers=[spec.FileDescr(source=d / "cover.png")],
        inputs=[inp], outputs=[outp], weights=spec.WeightsDescr(pytorch_state_dict=state,
                                                                torchscript=script),
        tags=["unet", "segmentation", "unetlab"])


def is_bioimageio_package(path) -> bool:
    """True for a zip file holding a bioimage.io description (``rdf.yaml`` or
    ``bioimageio.yaml``)."""
    p = Path(path)
    if not (p.is_file() and zipfile.is_zipfile(p)):
        return False
    with zipfile.ZipFile(p) as z:
        return any(n.endswith(("rdf.yaml", "bioimageio.yaml")) for n in z.namelist())


def load_bioimageio(path):
    """The :class:`~unetlab.model.UNet` of a bioimage.io package written by
    :func:`export_bioimageio`: architecture from the description's kwargs, weights loaded
    with ``torch.load(weights_only=True)``. Other packages are refused with one line."""
    import torch
    import yaml

    from .model import UNet

    p = Path(path)
    if not is_bioimageio_package(p):
        raise UnetlabError(f"{p}: not a bioimage.io package (a zip with rdf.yaml)")
    with zipfile.ZipFile(p) as z:
        rdf_name = next(n for n in z.namelist() if n.endswith(("rdf.yaml", "bioimageio.yaml")))
        rdf = yaml.safe_load(z.read(rdf_name))
        try:
            sd = rdf["weights"]["pytorch_state_dict"]
            arch = sd["architecture"]
            if arch.get("callable") != "UNet" or "unetlab" not in rdf.get("tags", []):
                raise KeyError("architecture")
            state = torch.load(io.BytesIO(z.read(sd["source"])), map_location="cpu",
                               weights_only=True)
            net = UNet.from_config(dict(arch.get("kwargs", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise UnetlabError(f"{p}: not a unetlab bioimage.io package ({e})") from None
    net.load_state_dict(state)
    return net.eval()
