"""Every verb answers --help with examples; wrong arguments give one line and exit code 2."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from unetlab.cli import VERBS, main


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help_with_examples(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"unetlab {verb}" in out
    assert "xample" in out, f"'unetlab {verb} --help' shows no examples"


@pytest.mark.parametrize("verb", VERBS)
def test_wrong_argument_is_one_line_exit_2(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--no-such-option-xyz"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--no-such-option-xyz" in err or "required" in err
    assert "Traceback" not in err


def test_unknown_verb_and_no_verb(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main([]) == 2


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "unetlab", "--version"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("unetlab ")


#: the verbs the README and `unetlab --help` document; a missing one must fail, never vanish
DOCUMENTED_VERBS = ("train", "predict", "evaluate", "demo", "weights", "augment", "export",
                    "report", "models")


def test_every_documented_verb_is_listed_by_help():
    r = subprocess.run([sys.executable, "-m", "unetlab", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    listed = re.findall(r"^    (\w+)  ", r.stdout, flags=re.M)  # "    train     train a U-Net"
    assert listed == list(DOCUMENTED_VERBS), r.stdout
    assert set(VERBS) == set(DOCUMENTED_VERBS)


@pytest.mark.parametrize("verb", DOCUMENTED_VERBS)
def test_every_documented_verb_answers_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: unetlab {verb}")
