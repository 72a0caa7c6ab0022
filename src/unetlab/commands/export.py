"""``unetlab export``: write a trained model as TorchScript or ONNX."""
from __future__ import annotations

import argparse

HELP = "export a trained model as TorchScript, ONNX or a bioimage.io package"
DESCRIPTION = """\
Export a unetlab model (model.pt, best.pt or checkpoint.pt) for use without unetlab.
The output is never the model file itself; an existing output is replaced only with --overwrite.

The exported graph takes (N, C, H, W) float32 images (normalised as unetlab does) and returns
logits (N, K, H_out, W_out), or class probabilities with --probabilities. Height and width are
dynamic: any size valid for the network works (the valid sizes and the context are stored in
the file's metadata). ONNX needs the optional extra: pip install 'unetlab[onnx]'.

--format bioimageio writes a bioimage.io model package (a zip, model description format 0.5:
state-dict and TorchScript weights, valid input sizes, the normalisation as preprocessing, the
soft-max as postprocessing, test tensors, cover, citation) for the bioimage.io tools (deepImageJ,
ilastik, QuPath, bioimageio.core); 'unetlab predict' reads it back. Needs the bioimageio extra.

examples:
  unetlab export runs/demo/model.pt --format torchscript --out unet.ts
  unetlab export runs/demo/model.pt --format onnx --out unet.onnx --probabilities
  unetlab export runs/demo/model.pt --format bioimageio --out unet.zip
  python -c "import torch; m = torch.jit.load('unet.ts'); print(m(torch.zeros(1, 1, 188, 188)).shape)"
"""

#: Largest --trace-size: tracing allocates the activations of one image of that size.
MAX_TRACE_SIZE = 2048


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="unetlab model file (model.pt, best.pt, checkpoint.pt)")
    p.add_argument("--format", default="torchscript", metavar="FORMAT",
                   help="torchscript (default), onnx or bioimageio")
    p.add_argument("--out", required=True, metavar="FILE", help="output file (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--probabilities", action="store_true",
                   help="bake the pixel-wise soft-max into the graph (output probabilities)")
    p.add_argument("--trace-size", type=int, default=None, metavar="N",
                   help="input size used for tracing (default: a small valid size)")


def run(args: argparse.Namespace) -> int:
    from ..errors import UnetlabError
    from ..export import export_model

    if args.trace_size is not None and not 1 <= args.trace_size <= MAX_TRACE_SIZE:
        raise UnetlabError(f"--trace-size: must be between 1 and {MAX_TRACE_SIZE} pixels "
                           f"(the graph accepts any valid size anyway), got {args.trace_size}")
    out = export_model(args.model, args.out, format=args.format,
                       probabilities=args.probabilities, trace_size=args.trace_size,
                       overwrite=args.overwrite)
    print(f"wrote {out} ({args.format})")
    return 0
