"""Run the commands that the documentation shows, as a reader would type them.

Used by ``test_docs.py``. A *case* is one command of a fenced block of a Markdown file (a shell
line, continuation lines joined), one ```python block, or one ``Examples`` line of a verb's
``--help``. The cases of one source run in order in one folder (a :class:`Workspace`), because
later commands use what earlier ones wrote; running one case first runs the cases before it.

How a command runs:

* ``unetlab ARGS`` without shell syntax: ``unetlab.cli.main(ARGS)`` in this process, in the
  workspace folder — the function the ``unetlab`` console script calls (it saves ~3 s of torch
  start-up per command).
* anything else (loops, links, ``$VARS``, globs, redirections, ``python x.py``, ``torchrun``):
  ``bash -c`` in the workspace with a ``bin/`` folder first on ``PATH`` whose ``unetlab``,
  ``python`` and ``torchrun`` are this test run's interpreter and sources (what
  ``source .venv/bin/activate`` gives a reader). ``VAR=value`` lines are kept for later lines.
* a ```python block whose first line is ``# NAME.py`` is written to NAME.py (the doc runs it
  with a later shell command); any other ```python block runs as a script.

Only the substitutions that ``test_docs.py`` declares change a command (sizes, iterations).
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from cli_helpers import PYTHON, REPO, Result, cli_env

#: first words of a shell command block; any other block must be ```text or declared
COMMAND_WORDS = ("unetlab", "make", "python", "mkdir", "for", "ln", "cp", "torchrun",
                 "source", "pip", ".venv/", "head$", "nodeK$", "ls", "cd", "export")
_ASSIGN = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_SHELL_SYNTAX = re.compile(r"[$*?|<>;&`()\[\]{}~]")


@dataclass(frozen=True)
class Case:
    source: str          # "README.md", "docs/isbi2012.md" or "train --help"
    line: int            # line of the command in the source (1-based; help: example number)
    text: str            # as written (continuations joined)
    kind: str = "shell"  # shell | python | file | unclassified
    name: str = ""       # kind "file": the file to write

    @property
    def id(self) -> str:
        return f"{self.source}:{self.line}"


def fenced_blocks(path: Path) -> list[tuple[str, int, list[str]]]:
    """``(language, line of the first content line, lines)`` of every ``` fence."""
    blocks, lang, start, body = [], None, 0, []
    for i, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        s = raw.strip()
        if lang is None and s.startswith("```"):
            lang, start, body = s[3:].strip(), i + 1, []
        elif lang is not None and s == "```":
            blocks.append((lang, start, body))
            lang = None
        elif lang is not None:
            body.append(raw)
    return blocks


def logical_lines(lines: Sequence[str], first: int) -> list[tuple[int, str]]:
    """Shell lines with backslash continuations joined; blank and comment lines dropped."""
    out, cur, at = [], "", first
    for i, raw in enumerate(lines, first):
        s = raw.strip()
        if not cur:
            at = i
            if not s or s.startswith("#"):
                continue
        if s.endswith("\\"):
            cur += s[:-1].rstrip() + " "
            continue
        out.append((at, cur + s))
        cur = ""
    if cur:
        out.append((at, cur.strip()))
    return out


def doc_cases(path: Path, not_commands: dict[tuple[str, str], str]) -> list[Case]:
    """The cases of one Markdown file (``path`` inside the repository)."""
    rel = path.relative_to(REPO).as_posix()
    cases = []
    for lang, line, body in fenced_blocks(path):
        if lang in ("text", "console", "output"):
            continue
        if lang == "python":
            first = body[0].strip() if body else ""
            m = re.fullmatch(r"#\s*([\w.-]+\.py)", first)
            cases.append(Case(rel, line, "\n".join(body), "file" if m else "python",
                              m.group(1) if m else ""))
            continue
        lines = logical_lines(body, line)
        if not lines:
            continue
        if not lines[0][1].startswith(COMMAND_WORDS) and not _ASSIGN.match(lines[0][1]):
            if (rel, lines[0][1]) not in not_commands:
                cases.append(Case(rel, line, lines[0][1], "unclassified"))
            continue
        cases.extend(Case(rel, at, text) for at, text in lines)
    return cases


def option_mentions(path: Path) -> list[Case]:
    """Every ``--option`` inside an inline code span of the prose (outside fences), as a case
    ``"option --NAME: `SPAN`"`` (kind "option")."""
    rel = path.relative_to(REPO).as_posix()
    out, fenced = [], False
    for i, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if raw.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        for span in re.findall(r"`([^`]+)`", raw):
            for opt in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", span):
                out.append(Case(rel, i, f"option {opt}: `{span}`", "option"))
    return out


def all_options() -> set[str]:
    """The option strings of every verb of ``unetlab``."""
    from unetlab.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.choices)  # noqa: SLF001
    return {o for p in sub.choices.values() for a in p._actions for o in a.option_strings}


def help_cases(verb: str) -> list[Case]:
    """The ``Examples`` lines of ``unetlab VERB --help`` (after ``examples:`` in the epilog)."""
    from unetlab.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and verb in a.choices)  # noqa: SLF001
    text = sub.choices[verb].format_help()
    m = re.search(r"^examples?\b[^\n]*:\s*$(.*?)(?:^\S|\Z)", text, flags=re.M | re.S | re.I)
    body = m.group(1).splitlines() if m else []
    return [Case(f"{verb} --help", n, t) for n, (_, t) in enumerate(logical_lines(body, 1), 1)]


def substitute(text: str, subs: Sequence[tuple[str, str]], used: set[int] | None = None) -> str:
    """Apply the declared ``(regex, replacement)`` substitutions in order."""
    for k, (pattern, repl) in enumerate(subs):
        new = re.sub(pattern, repl, text, flags=re.M)
        if new != text and used is not None:
            used.add(k)
        text = new
    return text


def _shims(bin_dir: Path) -> None:
    """``unetlab``, ``python`` and ``torchrun`` of this test run (a reader's activated venv)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, cmd in [("unetlab", f'"{PYTHON}" -m unetlab'), ("python", f'"{PYTHON}"'),
                      ("python3", f'"{PYTHON}"'),
                      ("torchrun", f'"{PYTHON}" -m torch.distributed.run')]:
        p = bin_dir / name
        p.write_text(f'#!/bin/sh\nexec {cmd} "$@"\n')
        p.chmod(0o755)


@dataclass
class Workspace:
    """One folder in which the cases of one source run in order."""

    root: Path
    cases: list[Case]
    rewrite: Callable[[Case], str]                      # the substitutions for one case
    #: cases never run as a prerequisite of a later one (skipped or slow ones)
    optional: Callable[[Case], bool] = lambda case: False
    results: dict[int, Result] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.root.mkdir(parents=True, exist_ok=True)
        _shims(self.root / ".bin")

    def result(self, index: int) -> Result:
        """The result of case ``index``, running the cases before it first (once each, except
        the ``optional`` ones)."""
        for i in range(index):
            if i not in self.results and not self.optional(self.cases[i]):
                self.results[i] = self._run(self.cases[i], i)
        if index not in self.results:
            self.results[index] = self._run(self.cases[index], index)
        return self.results[index]

    def env(self) -> dict[str, str]:
        env = cli_env(**self.variables)
        env["PATH"] = f"{self.root / '.bin'}{os.pathsep}{env.get('PATH', '')}"
        env.pop("VIRTUAL_ENV", None)
        return env

    def _run(self, case: Case, index: int) -> Result:
        text = self.rewrite(case)
        if case.kind == "file":
            (self.root / case.name).write_text(text + "\n")
            return Result(0, "", "")
        if case.kind == "python":
            script = self.root / f".doc_block_{index}.py"
            script.write_text(text + "\n")
            return self._bash(f'python "{script.name}"')
        m = _ASSIGN.match(text)
        if m:
            res = self._bash(f'{text}\nprintf %s "${m.group(1)}"')
            self.variables[m.group(1)] = res.out
            return res
        if text.startswith("unetlab ") and not _SHELL_SYNTAX.search(text.split("#")[0]):
            res = self._in_process(shlex.split(text, comments=True)[1:])
        else:
            res = self._bash(text)
        return res

    def _bash(self, text: str, timeout: float = 600) -> Result:
        p = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", text], cwd=self.root,
                           env=self.env(), capture_output=True, text=True, timeout=timeout)
        return Result(p.returncode, p.stdout, p.stderr)

    def _in_process(self, argv: list[str]) -> Result:
        import torch

        from unetlab.cli import main

        out, err, here, threads = io.StringIO(), io.StringIO(), os.getcwd(), torch.get_num_threads()
        try:
            os.chdir(self.root)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = main(argv)
                except SystemExit as e:
                    rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        finally:
            os.chdir(here)
            torch.set_num_threads(threads)
        return Result(int(rc or 0), out.getvalue(), err.getvalue())
