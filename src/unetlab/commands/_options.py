"""Command-line options that several verbs share, declared once (no heavy imports here)."""
from __future__ import annotations

import argparse


def add_overwrite(p: argparse.ArgumentParser) -> None:
    """``--overwrite``: the rule of :func:`unetlab.writers.check_outputs` — existing output files
    are kept unless it is given, and an input file is never overwritten."""
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (an input is never overwritten)")
