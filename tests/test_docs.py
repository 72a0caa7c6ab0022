"""Docs as tests: every command of README.md and docs/*.md, and every ``Examples`` line of every
``unetlab VERB --help``, runs here and must exit 0 (see ``doc_commands.py`` for how).

What may differ from the text, all declared below and nowhere else:

* ``SUBSTITUTIONS``: sizes and lengths (iterations, widths, image sizes, the number of test
  slices) made tiny, and the data folder of the ISBI recipe; each entry must still be used.
* ``SKIP``: commands that cannot run here (a GPU, a cluster, the network, ``make`` itself —
  ``make demo``/``make test`` set up the environment this test already runs in), with a reason.
* ``SLOW``: commands that run only with ``-m slow`` (``make test-slow``).
* ``EXPECTED_TO_FAIL_TODAY``: the commands that fail as written today, each with the reason;
  strict, so a fixed one fails the test until its entry is deleted.
* ``NOT_COMMANDS``: blocks of the docs that are not commands (a tree, a diagram, printed output)
  and are not fenced as ```text.
* ``PRELUDE`` / ``EPILOGUE``: the README snippet's undefined inputs (``instance_labels``,
  ``big_image``: a small synthetic image), and asserts of what its comments promise.

The help examples run in one folder prepared as the help texts assume: ``unetlab demo --data
cells`` (a small synthetic dataset) and a tiny model at ``runs/demo/model.pt`` (where
``make demo`` leaves its model; the folder marked as the demo's).
"""
from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import REPO, tiny_model
from conftest import SHARED_DATA
from doc_commands import (Case, Workspace, all_options, doc_cases, help_cases, option_mentions,
                          substitute)

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
VERBS = ("train", "predict", "evaluate", "demo", "weights", "augment", "export", "report", "models")
ISBI = SHARED_DATA / "isbi2012"

#: (source prefix, regex, replacement, why); "" matches every source
SUBSTITUTIONS = [
    ("", r"--iterations \d+", "--iterations 2", "training length"),
    ("", r"--width \d+", "--width 4", "network width"),
    ("", r"--val-every \d+", "--val-every 2", "validation interval"),
    ("", r"--time \d+m", "--time 3s", "training budget"),
    ("", r"^((?:unetlab|torchrun .*-m unetlab) train\b(?!.*--(?:iterations|print-config|resume))"
         r"[^#]*?)\s*(#.*)?$", r"\1 --iterations 2", "training length"),
    ("", r"^((?:unetlab|torchrun .*-m unetlab) train\b(?!.*--(?:width|print-config|resume))"
         r"[^#]*?)\s*(#.*)?$", r"\1 --width 4", "network width"),
    ("", r"^(unetlab demo (?!--data)[^#]*?)\s*(#.*)?$", r"\1 --quick --iterations 1 --size 64",
     "the demo's sizes"),
    ("docs/tutorial-cells.md", r'\("mycells", 4, 256, 0\), \("myval", 1, 256, 1\), '
                               r'\("mytest", 1, 512, 2\)',
     '("mycells", 2, 96, 0), ("myval", 1, 96, 1), ("mytest", 1, 128, 2)', "image sizes"),
    ("docs/tutorial-3d.md", r"SHAPE, SPACING = \(64, 128, 128\)", "SHAPE, SPACING = (32, 64, 64)",
     "volume sizes"),
    ("", r"\.\./shared/data/isbi2012/test/image ", f"{ISBI}/test/image/0[01].png ",
     "where the data is; 2 of the 30 test slices"),
    ("docs/isbi2012.md", r"\.\./shared/data/isbi2012", str(ISBI), "where the data is"),
    ("docs/isbi2012.md", r"\$DATA/test/image ", r"$DATA/test/image/0[01].png ",
     "2 of the 30 test slices"),
]

#: (source prefix, command prefix, reason)
SKIP = [
    ("", "make ", "make demo / make test set up the environment this test runs in"),
    ("", ".venv/bin/pip ", "installs packages from the network"),
    ("", "python3 -m venv", "creates a virtual environment"),
    ("", "source .venv/bin/activate", "the test puts unetlab and python on PATH itself"),
    ("", "head$", "needs a Dask cluster"),
    ("", "nodeK$", "needs a Dask cluster"),
    ("", "torchrun --nproc_per_node 4", "needs 4 GPUs"),
    ("", "torchrun --nnodes 2", "needs 2 nodes"),
    ("docs/isbi2012.md", "unetlab train isbi/train --val isbi/val --out runs/isbi-paper "
                         "--preset paper", "needs a GPU"),
    ("train --help", "unetlab train cells --out runs/paper --preset paper", "needs a GPU"),
    ("docs/distributed.md", "from dask_jobqueue", "needs SLURM and dask-jobqueue"),
    *([] if importlib.util.find_spec("onnxruntime") else
      [("export --help", "unetlab export runs/demo/model.pt --format onnx",
        "the onnx extra is not installed")]),
]

#: (source prefix, command prefix): run only with -m slow
SLOW = [
    ("README.md", "from unetlab import UNet"),          # the paper's 31 M-parameter net, 8× TTA
    ("", "torchrun --nproc_per_node 2"),
    ("demo --help", "unetlab demo --out"),
]

_NOT_THERE = "names files that a user (after demo --data) does not have"
#: (source prefix, command prefix, reason) — the commands that fail as written today
EXPECTED_TO_FAIL_TODAY: list[tuple[str, str, str]] = []

#: options of other programs that the docs name in inline code
FOREIGN_OPTIONS = {"--index-url"}

#: (doc, first line of the block): blocks that are not commands
NOT_COMMANDS = {
    ("docs/distributed.md", "pred.zarr/                 group; attrs[\"unetlab\"] = {model, "
                            "input, shape, chunk, tile, tta,"): "the zarr output's layout",
}

#: names the README's Python snippet uses without defining them (a reader has their own)
PRELUDE = {
    ("README.md", "from unetlab import UNet, weight_map, predict_tiled"):
        "from unetlab.synthetic import touching_cells_arrays\n"
        "((big_image, instance_labels),) = touching_cells_arrays(1, 96, 0)\n",
}


#: what the README's snippet says in its comments, checked after it runs
EPILOGUE = {
    ("README.md", "from unetlab import UNet, weight_map, predict_tiled"):
        "\nassert (net.output_size(572), net.context) == (388, 92)\n"
        "assert sum(p.numel() for p in net.parameters()) == 31_030_658\n"
        "assert w.shape == instance_labels.shape and w.max() > 5 * w.min()\n"
        "assert prob.shape == (2, *big_image.shape), prob.shape\n",
}


def _match(table, case: Case):
    for row in table:
        if case.source.startswith(row[0]) and case.text.startswith(row[1]):
            return row
    return None


def _cases() -> list[Case]:
    cases = [c for doc in DOCS for c in doc_cases(doc, NOT_COMMANDS)]
    return cases + [c for verb in VERBS for c in help_cases(verb)]


CASES = _cases()
_USED: set[int] = set()


def _rewrite(case: Case) -> str:
    subs = [(p, r) for s, p, r, _ in SUBSTITUTIONS if case.source.startswith(s)]
    idx = [k for k, (s, *_) in enumerate(SUBSTITUTIONS) if case.source.startswith(s)]
    used: set[int] = set()
    text = substitute(case.text, subs, used)
    _USED.update(idx[k] for k in used)
    for (src, first), prelude in PRELUDE.items():
        if case.source == src and case.text.startswith(first):
            text = prelude + text + EPILOGUE.get((src, first), "")
    return text


def _group(source: str) -> str:
    """The help examples of all verbs share one folder; each doc has its own."""
    return "help" if source.endswith("--help") else source


def _prepare(group: str, root: Path, ws: Workspace) -> None:
    if group == "docs/isbi2012.md" and not ISBI.is_dir():
        pytest.skip(f"shared data not available: {ISBI}")
    if group in ("help", "docs/distributed.md"):
        _demo_files(root, ws, group)
    if group == "docs/distributed.md":
        _zarr_inputs(root)


def _demo_files(root: Path, ws: Workspace, group: str) -> None:
    """What the examples start from: ``unetlab demo --data cells`` (run for real) and, in place
    of a finished ``unetlab demo --out runs/demo``, a tiny model at ``runs/demo/model.pt``."""
    from unetlab.demo import DEMO_MARKER

    res = ws._run(Case(group, 0, "unetlab demo --data cells"), -1)  # noqa: SLF001
    assert res.rc == 0, res.err
    demo = root / "runs" / "demo"
    demo.mkdir(parents=True, exist_ok=True)
    tiny_model(demo / "model.pt", depth=2)
    (demo / DEMO_MARKER).write_text("{}")     # a demo folder: a new demo may replace it


def _zarr_inputs(root: Path) -> None:
    """A tiny model at runs/x/model.pt, huge.zarr (a 2-D zarr array) and huge.ome.zarr (an
    OME-Zarr image, level 0 and a half-size level 1)."""
    import zarr

    (root / "runs" / "x").mkdir(parents=True)
    tiny_model(root / "runs" / "x" / "model.pt", depth=2)
    image = np.random.default_rng(0).random((96, 80), dtype=np.float32)
    zarr.open_array(str(root / "huge.zarr"), mode="w", shape=image.shape, chunks=(48, 40),
                    dtype="f4")[...] = image
    g = zarr.open_group(str(root / "huge.ome.zarr"), mode="w")
    g.create_array("0", data=image[None], chunks=(1, 48, 40))
    g.create_array("1", data=image[None, ::2, ::2], chunks=(1, 48, 40))
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
            {"name": "x", "type": "space"}]
    g.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [1, s, s]}]}
        for k, s in ((0, 1), (1, 2))]}]


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory):
    made: dict[str, Workspace] = {}

    def get(group: str) -> Workspace:
        if group not in made:
            root = tmp_path_factory.mktemp(re.sub(r"\W+", "_", group))
            ws = Workspace(root, [c for c in CASES if _group(c.source) == group], _rewrite,
                           optional=lambda c: bool(_match(SKIP, c) or _match(SLOW, c)))
            _prepare(group, root, ws)     # may skip: then every case of the group skips
            made[group] = ws
        return made[group]

    return get


def _param(case: Case):
    marks = []
    if _match(SLOW, case):
        marks.append(pytest.mark.slow)
    row = _match(EXPECTED_TO_FAIL_TODAY, case)
    if row:
        marks.append(pytest.mark.xfail(strict=True, reason=row[2]))
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_documented_command_runs_as_written(case, workspaces):
    assert case.kind != "unclassified", (
        f"{case.id}: a fenced block that is neither commands (first word one of unetlab, "
        f"make, python, ...) nor ```text: fence it as ```text or list it in NOT_COMMANDS")
    skip = _match(SKIP, case)
    if skip:
        pytest.skip(skip[2])
    if str(ISBI) in _rewrite(case) and not ISBI.is_dir():
        pytest.skip(f"shared data not available: {ISBI}")
    ws = workspaces(_group(case.source))
    res = ws.result(ws.cases.index(case))
    assert res.rc == 0, (f"{case.id}: `{_rewrite(case)}` exited {res.rc}\n"
                         f"{res.err[-2000:]}\n{res.out[-1000:]}")
    assert "this is a bug" not in res.err


OPTIONS = [c for doc in DOCS for c in option_mentions(doc)]


@pytest.mark.parametrize("case", [_param(c) for c in OPTIONS])
def test_every_option_named_in_the_prose_exists(case):
    """An option in the docs' text (not only in their commands) is one that unetlab has."""
    opt = case.text.split()[1].rstrip(":")
    assert opt in all_options() | FOREIGN_OPTIONS, f"{case.id}: no verb has {opt}"


def test_every_doc_and_verb_has_commands_and_every_table_entry_is_used():
    sources = {c.source for c in CASES}
    for doc in ("README.md", "docs/isbi2012.md", "docs/tutorial-cells.md",
                "docs/distributed.md"):
        assert doc in sources, doc
    for verb in VERBS:
        assert f"{verb} --help" in sources, f"unetlab {verb} --help shows no examples"
    for table in (SKIP, SLOW, EXPECTED_TO_FAIL_TODAY):
        for row in table:
            assert any(_match([row], c) for c in CASES + OPTIONS), f"stale entry: {row}"
    for doc, first in NOT_COMMANDS:
        assert any(doc == d.relative_to(REPO).as_posix() and first in d.read_text()
                   for d in DOCS), f"stale NOT_COMMANDS entry: {doc}: {first}"
    for k, (src, pattern, _, _) in enumerate(SUBSTITUTIONS):
        hit = any(c.source.startswith(src) and re.search(pattern, c.text, flags=re.M)
                  for c in CASES)
        hit = hit or k in _USED
        assert hit, f"stale substitution: {SUBSTITUTIONS[k]}"


def test_setup_shows_progress_and_ci_runs_make_test():
    """`make` says what it installs, step by step, never with pip's -q; CI runs `make test`;
    TORCH_INDEX chooses the index of the torch wheel (e.g. the CPU-only build)."""
    import shutil
    import subprocess

    assert "\nmake test\n" in (REPO / ".ci" / "run").read_text()
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", "-B", "install", "TORCH_INDEX=https://example.org/cpu"],
                         cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    assert dry.count("==> [") == 3, dry
    pip = [ln for ln in dry.splitlines() if "pip install" in ln]
    assert len(pip) == 2 and not any(" -q" in ln for ln in pip), pip
    assert "--index-url https://example.org/cpu 'torch==" in pip[0]
    assert "-e '.[dev,bioimageio,napari]'" in pip[1]    # what the whole suite needs
