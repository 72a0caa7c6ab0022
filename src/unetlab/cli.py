"""The command line: ``unetlab train | predict | evaluate | demo | weights | augment | export |
report``.

Each verb lives in ``unetlab.commands.<verb>`` and provides ``HELP`` (one line),
``DESCRIPTION`` (the ``--help`` text, with examples), ``add_arguments(parser)`` and
``run(args) -> int``. User errors (:class:`unetlab.errors.UnetlabError`, wrong arguments, missing
or unreadable files) print one line ``unetlab: error: ...`` and exit with code 2; ``--debug``
shows the traceback instead. Ctrl-C exits with code 130 after the verb has saved what it can.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .errors import UnetlabError

VERBS = ("train", "predict", "evaluate", "demo", "weights", "augment", "export", "report",
         "models")


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports wrong arguments in one line (exit code 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``unetlab`` parser. Every verb module is imported (for its one-line ``HELP``), but
    only the verb named in ``argv`` (``None``: all of them) adds its options, so
    ``unetlab --help`` and ``unetlab VERB --help`` do not import what the other verbs need.
    A verb module that is missing or broken is an error, never silently dropped."""
    parser = _OneLineParser(
        prog="unetlab",
        description="U-Net (Ronneberger, Fischer & Brox 2015) for microscopy segmentation: "
                    "train from a few annotated images, predict huge images tile by tile, "
                    "evaluate with the ISBI 2012 and cell metrics.",
        epilog="Run 'unetlab VERB --help' for the options and examples of each verb.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"unetlab {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_OneLineParser)
    chosen = _chosen_verb(argv)
    for verb in VERBS:
        mod = importlib.import_module(f"unetlab.commands.{verb}")
        p = sub.add_parser(verb, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if chosen is not None and verb != chosen:
            continue
        p.add_argument("--debug", action="store_true",
                       help="show the full traceback on errors")
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _chosen_verb(argv: Sequence[str] | None) -> str | None:
    """The verb the command line names (the first argument that is not an option), or
    ``None`` when ``argv`` is ``None`` (build every verb's options)."""
    if argv is None:
        return None
    for a in argv:
        if not a.startswith("-"):
            return a if a in VERBS else None
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False)
    if isinstance(getattr(args, "out", None), str) and not args.out.strip():
        print("unetlab: error: --out is empty (an unset shell variable?); name the output",
              file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("unetlab: interrupted", file=sys.stderr)
        return 130
    except (UnetlabError, FileNotFoundError, PermissionError, IsADirectoryError,
            NotADirectoryError) as e:
        if debug:
            raise
        print(f"unetlab: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"unetlab: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except MemoryError as e:
        if debug:
            raise
        print(f"unetlab: error: out of memory ({_one_line(e)}); use smaller images, tiles or "
              f"batches", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug, not bad input: one line, exit code 1
        if debug:
            raise
        print(f"unetlab: error: unexpected {type(e).__name__}: {_one_line(e)[:300]} (this is a "
              f"bug; run again with --debug for the traceback and report it)", file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and not isinstance(e, UnetlabError):
        return f"{e.filename}: {e.strerror or e}"
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
