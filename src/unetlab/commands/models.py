"""``unetlab models``: list the models shipped with unetlab (ready to predict, no training)."""
from __future__ import annotations

import argparse

HELP = "list the pretrained models shipped with unetlab"
DESCRIPTION = """\
List the models that come with unetlab: their name, what they segment, the data they were
trained on, the pixel size, what the output means and the licence (docs/models.md is their
model card). Every verb that takes a model file takes such a name too.

examples:
  unetlab models
  unetlab predict --model em-membranes ../shared/data/isbi2012/test/image --out preds --tta
  unetlab export em-membranes --format bioimageio --out em-membranes.zip
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--paths", action="store_true", help="also print each model's file")


def run(args: argparse.Namespace) -> int:
    from ..shipped import pretrained_models

    models = pretrained_models()
    if not models:
        print("no shipped models are installed")
        return 0
    for m in models.values():
        size = m.path.stat().st_size / 2**20
        print(f"{m.name}  ({size:.1f} MiB) — {m.summary}")
        for what in ("data", "pixel_size", "output", "licence"):
            print(f"    {what.replace('_', ' ')}: {getattr(m, what)}")
        if args.paths:
            print(f"    file: {m.path}")
    return 0
