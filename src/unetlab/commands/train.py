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
Sec. 3.1, He initialisation.

The options not given come from --preset: 'auto' (default) is 'paper' on a GPU and 'cpu' on a
CPU. 'paper' is Sec. 3 exactly (width 64, depth 4, 572 -> 388 tiles, SGD momentum 0.99, 5000
iterations). 'cpu' learns within an hour on a laptop CPU: width 16, 380 -> 196 tiles, Adam,
a 3 px border band (--sigma 3), --time 60m (docs/isbi2012.md has the ablations behind it).
--print-config shows each value and why the preset chose it.

DATA is a dataset folder (image/ + label/ sub-folders, ISBI train-volume.tif + train-labels.tif,
a Cell Tracking Challenge folder) or 'synthetic' (generated touching cells).

Volumes (--dims 3, the 3D U-Net of Cicek et al. 2016; docs/tutorial-3d.md): DATA holds image/
+ label/ folders of TIFF stacks or zarr volumes, or is a 3D Cell Tracking Challenge folder
(full or slice annotations); 3x3x3 convolutions, 3D tiles, elastic deformation in 3D, the weight
map with the voxel aspect (--spacing, else as the files declare it). --pooling 1,2,2 keeps a coarse
z unpooled; --tile-z sets the tile's z side; --unlabelled N marks label value N as not
annotated (sparse annotation: only annotated voxels count in the loss). Validation scores SEG
and foreground IoU (--select seg|iou|loss; the Rand error is 2D-only). The presets have 3D forms:
'paper' = Cicek et al. (width 32, depth 3, batch norm, channels doubled, 132x132x116 tiles),
'cpu' = width 8, depth 3, batch norm, 132^3 tiles, Adam at lr 0.003, --time 60m.

The run folder RUN gets config.toml, checkpoint.pt, model.pt (unetlab.load_model), best.pt
(best validation score), log.csv and curves.png, all written atomically; data paths are stored
absolute, so the folder works from anywhere. RUN must be new, a run folder, or empty (a
non-empty other folder needs --overwrite); one process at a time owns it. Ctrl-C or SIGTERM
finishes the current iteration, saves a checkpoint and exits; --resume continues bit-exactly
(fp32 on CPU). --threads 0 (default) times the first steps with 1 and with all cores and keeps
the faster; --precision auto uses bf16 where the hardware computes it natively.

Several GPUs or machines: start the same command with torchrun, which trains with PyTorch
DistributedDataParallel (nccl on CUDA, one GPU per process; gloo on CPU). Each process draws its
own tiles and augmentations; gradients are averaged, so a step sees N x --batch tiles at the
same --lr and --momentum; only rank 0 writes RUN and validates; --resume works the same way
(the run folder must be shared by all nodes). See docs/distributed.md for batch size, learning
rate and momentum against the paper's batch of one.

Options are resolved as: preset < --config FILE < command-line flags (--iterations without
--time drops the time budget of the preset or the file). --print-config prints every option with its resolved
value as TOML, which --config reads back.

examples (the first line writes a small dataset to try it on):
  unetlab demo --data cells
  unetlab train cells --out runs/auto --time 10m              # the device's recipe, 10 minutes
  unetlab train cells --out runs/paper --preset paper --iterations 20000 --device cuda
  unetlab train cells --out runs/cells --width 16 --depth 3 --iterations 2000 --val synthetic
  unetlab train --print-config > cfg.toml     # edit, then:
  unetlab train cells --config cfg.toml --out runs/x
  unetlab train --out runs/cells --resume     # continue an interrupted run
  torchrun --nproc_per_node 4 -m unetlab train data/ --out runs/ddp      # 4 GPUs, one node
  torchrun --nproc_per_node 2 -m unetlab train synthetic --device cpu --threads 1  # 2 CPU procs
  torchrun --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d --rdzv-endpoint head:29400 \\
           -m unetlab train data/ --out /shared/runs/ddp                 # 2 nodes
"""

# metavars of the flags (options with a few named values show them: config.CHOICES); every
# TrainConfig option is a flag --name-with-dashes (booleans also --no-name), the positional
# DATA and --out excepted
_METAVARS = {
    "val": "VAL", "labels": "LABELS", "val_labels": "LABELS", "width": "W", "depth": "D",
    "tile": "N", "batch": "B", "iterations": "N", "time": "DURATION", "lr": "LR",
    "momentum": "M", "w0": "W0", "cldice": "W", "sigma": "PX", "seed": "S",
    "device": "auto|cpu|cuda", "grad_clip": "NORM",
    "select": "rand_error|pixel_error|loss|seg|iou", "threads": "N", "dropout": "P",
    "dims": "2|3", "pooling": "Z,Y,X", "tile_z": "N", "spacing": "DZ,DY,DX", "unlabelled": "N",
}
_TYPES = {"int": int, "float": float, "str": str}
_GENERIC = {"int": "N", "float": "X", "str": "TEXT"}


def _options():
    from ..training import TrainConfig

    return [f for f in fields(TrainConfig) if f.name not in ("data", "out", "data_as_given")]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..training import TrainConfig
    from ..training.config import CHOICES

    metavars = {**_METAVARS, **{name: "|".join(names) for name, names in CHOICES.items()}}
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
    p.add_argument("--overwrite", action="store_true",
                   help="write the run into a non-empty folder that holds no unetlab run")
    for f in _options():
        flag = "--" + f.name.replace("_", "-")
        doc = f"{f.metadata.get('doc', '')} ({_default_text(f.name, defaults)})"
        doc = doc.replace("%", "%%")
        if f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=None, help=doc)
        else:
            p.add_argument(flag, dest=f.name, type=_TYPES[str(f.type)],
                           metavar=metavars.get(f.name, _GENERIC[str(f.type)]), default=None,
                           help=doc)


def _default_text(name: str, defaults) -> str:
    """'default X', or the value of each preset where the preset sets the option."""
    from ..training.presets import preset_values

    if name == "preset":
        return "default 'auto'"
    cpu, paper = preset_values("cpu", bf16=True), preset_values("paper")
    cpu3, paper3 = preset_values("cpu", dims=3), preset_values("paper", dims=3)
    if name == "channels_last":
        return "preset cpu: true where bf16 runs, else false; paper: false; 3D: false"
    pick = {k: (v[name][0] if name in v else getattr(defaults, name))
            for k, v in (("cpu", cpu), ("paper", paper), ("cpu3", cpu3), ("paper3", paper3))}
    if name not in cpu and name not in paper:
        text = f"default {getattr(defaults, name)!r}"
    else:
        text = f"preset cpu: {pick['cpu']!r}, paper: {pick['paper']!r}"
    if name in cpu3 or name in paper3:
        text += f"; --dims 3: cpu {pick['cpu3']!r}, paper {pick['paper3']!r}"
    return text


def resolve(args: argparse.Namespace):
    """The TrainConfig of the command line: defaults < --config < flags (< the stored run
    configuration when resuming, which the flags may only change where allowed)."""
    from ..training.config import resolve_config

    flags = {f.name: getattr(args, f.name) for f in _options()}
    flags.update(data=args.data, out=args.out)
    return resolve_config(flags, args.config, args.resume)


def run(args: argparse.Namespace) -> int:
    from ..errors import UnetlabError
    from ..training import TrainingInterrupted, config_to_toml, describe_models, train

    cfg = resolve(args)
    if args.print_config:
        sys.stdout.write(config_to_toml(cfg))
        return 0
    if args.data is None and not args.config and not args.resume:
        raise UnetlabError("DATA: give the training data (a dataset folder or 'synthetic'), "
                           "or --config FILE, or --resume")
    from ..ddp import cleanup, init_distributed

    # under torchrun (WORLD_SIZE > 1): join the process group; nccl on the rank's GPU unless
    # --device cpu asks for gloo
    info = init_distributed({"cpu": "gloo"}.get(cfg.device, "nccl" if "cuda" in cfg.device
                                                 else None))
    inputs = (args.config,) if args.config and not args.resume else ()
    try:
        out = train(cfg, resume=args.resume, overwrite=args.overwrite, inputs=inputs,
                    rank=info.rank, world_size=info.world_size,
                    device=info.device if info.distributed else None)
    except TrainingInterrupted as e:
        if info.rank == 0:
            _print_interrupted(e)
        return e.exit_code
    finally:
        cleanup()
    if info.rank == 0:
        print(f"trained: {out} (log {out}/log.csv, curves {out}/curves.png)")
        print("\n".join(describe_models(out)))
    return 0


def _print_interrupted(e) -> None:
    if e.saved:
        print(f"\ninterrupted at iteration {e.iteration}: saved {e.run_dir / 'checkpoint.pt'}; "
              f"continue with: unetlab train --out {e.run_dir} --resume", file=sys.stderr)
    else:
        print(f"\naborted at iteration {e.iteration}: {e.run_dir / 'checkpoint.pt'} holds the "
              f"last saved state", file=sys.stderr)
