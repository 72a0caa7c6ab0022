"""``unetlab report``: write the HTML report of a run folder."""
from __future__ import annotations

import argparse

HELP = "write the HTML report of a run (pictures, curves, metrics, configuration)"
DESCRIPTION = """\
Write one self-contained HTML page about a run folder: training images with their labels, the
weight map (the paper's Fig. 3d), augmented samples, loss and validation curves (log.csv),
predictions with overlays, split/merge error maps, the metrics table, the configuration
(config.toml) and timing. Parts a run does not have are left out with a note.

`unetlab demo` fills RUN/report_data/ with everything; a run of `unetlab train` alone gives the
curves and the configuration.

examples:
  unetlab report runs/demo                      # writes runs/demo/report.html
  unetlab report runs/demo --out demo-report.html --no-embed
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run folder (config.toml, log.csv, report_data/)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="HTML file to write (default: RUN/report.html)")
    p.add_argument("--no-embed", action="store_true",
                   help="write the pictures as PNG files beside the page instead of embedding them")


def run(args: argparse.Namespace) -> int:
    from ..report import build_report

    out = build_report(args.run, args.out, embed=not args.no_embed)
    print(f"report: {out}")
    return 0
