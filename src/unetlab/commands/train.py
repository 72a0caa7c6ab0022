"""``unetlab train``: train a U-Net the paper's way (Sec. 3) into a run folder."""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

HELP = "train a U-Net on annotated images (or generated touching cells)"

DESCRIPTION = """\
Train a U-Net as in Ronneberger et al. 2015 (Sec. 3): one large tile per step, SGD with
momentum 0.99, pixel-wise soft-max + cross-entropy weighted by the weight map of Eq. 2
(w0 = 10, sigma = 5 px, class balance), elastic deformation and the other augmentations of
Sec. 3.1, He initialisation. Defaults are the paper's network (width 64, depth 4, 572 -> 388).

DATA is a dataset folder (image/ + label/ sub-folders, ISBI train-volume.tif + train-labels.tif,
a Cell Tracking Challenge folder) or 'synthetic' (generated touching cells).

The run folder RUN gets config.toml, checkpoint.pt, model.pt (unetlab.load_model), best.pt
(best validation score), log.csv and curves.png, all written atomically. Ctrl-C finishes the
current iteration, saves a checkpoint and exits; --resume continues bit-exactly (on CPU).

Several GPUs or machines: start the same command with torchrun, which trains with PyTorch
DistributedDataParallel (nccl on CUDA, one GPU per process; gloo on CPU). Each process draws its
own tiles and augmentations; gradients are averaged, so a step sees N x --batch tiles at the
same --lr and --momentum; only rank 0 writes RUN and validates; --resume works the same way
(the run folder must be shared by all nodes). See docs/distributed.md for batch size, learning
rate and momentum against the paper's batch of one.

Options are resolved as: defaults < --config FILE < command-line flags. --print-config prints
every option with its default (or the resolved value) as TOML, which --config reads back.

examples:
  unetlab train synthetic --out runs/cells --width 16 --iterations 2000 --val synthetic
  unetlab train ../shared/data/isbi2012/train --out runs/isbi --val val/ --width 32 --tile 380
  unetlab train --print-config > cfg.toml     # edit, then:
  unetlab train --config cfg.toml --out runs/x
  unetlab train --out runs/x --resume         # continue an interrupted run
  torchrun --nproc_per_node 4 -m unetlab train data/ --out runs/ddp      # 4 GPUs, one node
  torchrun --nproc_per_node 2 -m unetlab train synthetic --device cpu --threads 1  # 2 CPU procs
  torchrun --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d --rdzv-endpoint head:29400 \\
           -m unetlab train data/ --out /shared/runs/ddp                 # 2 nodes
"""

# metavars of the flags; every TrainConfig option is a flag --name-with-dashes (booleans also
# --no-name), the positional DATA and --out excepted
_METAVARS = {
    "val": "VAL", "labels": "LABELS", "val_labels": "LABELS", "width": "W", "depth": "D",
    "padding": "valid|same", "tile": "N", "batch": "B", "iterations": "N",
    "optimizer": "sgd|adam", "lr": "LR", "momentum": "M", "schedule": "poly|cosine|constant",
    "w0": "W0", "sigma": "PX", "seed": "S", "device": "auto|cpu|cuda", "grad_clip": "NORM",
    "norm": "none|batch|group|instance", "upsampling": "upconv|bilinear",
    "select": "rand_error|pixel_error|loss", "threads": "N", "dropout": "P",
}
_TYPES = {"int": int, "float": float, "str": str}
_GENERIC = {"int": "N", "float": "X", "str": "TEXT"}


def _options():
    from ..training import TrainConfig

    return [f for f in fields(TrainConfig) if f.name not in ("data", "out")]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..training import TrainConfig

    defaults = TrainConfig()
    p.add_argument("data", metavar="DATA", nargs="?", default=None,
                   help="training data folder/stack, or 'synthetic'")
    p.add_argument("--out", metavar="RUN", default=None,
                   help=f"run folder (default {defaults.out})")
    p.add_argument("--config", metavar="TOML", default=None,
                   help="read options from a TOML file (see --print-config)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in RUN from its checkpoint.pt")
    p.add_argument("--print-config", action="store_true",
                   help="print every option (resolved) as TOML and exit")
    for f in _options():
        flag = "--" + f.name.replace("_", "-")
        doc = f"{f.metadata.get('doc', '')} (default {getattr(defaults, f.name)!r})"
        doc = doc.replace("%", "%%")
        if f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=None, help=doc)
        else:
            p.add_argument(flag, dest=f.name, type=_TYPES[str(f.type)],
                           metavar=_METAVARS.get(f.name, _GENERIC[str(f.type)]), default=None,
                           help=doc)


def resolve(args: argparse.Namespace):
    """The TrainConfig of the command line: defaults < --config < flags (< the stored run
    configuration when resuming, which the flags may only change where allowed)."""
    from pathlib import Path

    from ..errors import UnetlabError
    from ..training import TrainConfig, config_from_mapping, load_config

    cfg = TrainConfig()
    if args.resume:
        out = args.out or (load_config(args.config).out if args.config else None)
        if out is None:
            raise UnetlabError("--resume: give the run folder with --out RUN")
        stored = Path(out) / "config.toml"
        ckpt = Path(out) / "checkpoint.pt"
        if stored.is_file():
            cfg = load_config(stored)
        elif ckpt.is_file():          # stopped between the checkpoint and config.toml writes
            from ..checkpoint import safe_load

            cfg = config_from_mapping(dict(safe_load(ckpt).get("config", {})), where=str(ckpt))
        else:
            raise UnetlabError(f"--resume: {stored}: no such file (is {out} a run folder?)")
    if args.config:
        cfg = load_config(args.config, cfg)
    flags = {f.name: getattr(args, f.name) for f in _options()}
    flags = {k: v for k, v in flags.items() if v is not None}
    if args.data is not None:
        flags["data"] = args.data
    if args.out is not None:
        flags["out"] = args.out
    return config_from_mapping(flags, cfg, where="command line").validate()


def run(args: argparse.Namespace) -> int:
    from ..training import TrainingInterrupted, config_to_toml, train

    cfg = resolve(args)
    if args.print_config:
        sys.stdout.write(config_to_toml(cfg))
        return 0
    if args.data is None and not args.config and not args.resume:
        from ..errors import UnetlabError

        raise UnetlabError("DATA: give the training data (a dataset folder or 'synthetic'), "
                           "or --config FILE, or --resume")
    from ..distributed import cleanup, init_distributed

    # under torchrun (WORLD_SIZE > 1): join the process group; nccl on the rank's GPU unless
    # --device cpu asks for gloo
    backend = {"cpu": "gloo", "cuda": "nccl"}.get(cfg.device)
    info = init_distributed(backend)
    device = info.device if info.distributed else None
    try:
        out = train(cfg, resume=args.resume, rank=info.rank, world_size=info.world_size,
                    device=device)
    except TrainingInterrupted as e:
        if info.rank != 0:
            return 130
        if e.saved:
            print(f"\ninterrupted at iteration {e.iteration}: saved {e.run_dir / 'checkpoint.pt'}"
                  f"; continue with: unetlab train --out {e.run_dir} --resume", file=sys.stderr)
        else:
            print(f"\naborted at iteration {e.iteration}: {e.run_dir / 'checkpoint.pt'} holds the "
                  f"last saved state", file=sys.stderr)
        return 130
    finally:
        cleanup()
    if info.rank == 0:
        print(f"trained: {out}/model.pt (log {out}/log.csv, curves {out}/curves.png)")
    return 0
