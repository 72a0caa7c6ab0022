"""Command-line options that several verbs share, declared once (no heavy imports here)."""
from __future__ import annotations

import argparse


def add_overwrite(p: argparse.ArgumentParser) -> None:
    """``--overwrite``: the rule of :func:`unetlab.writers.check_outputs` — existing output files
    are kept unless it is given, and an input file is never overwritten."""
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (an input is never overwritten)")


def seed(text: str) -> int:
    """argparse type of every ``--seed``: an integer in 0 … ``MAX_SEED`` (the range torch and
    numpy both accept), else a one-line usage error naming the option."""
    from ..errors import UnetlabError
    from ..training.config import check_seed

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    try:
        return check_seed(value)
    except UnetlabError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--seed: ")) from None
