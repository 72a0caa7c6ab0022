"""Start-up: building the parser never imports torch, so ``--help`` answers at once, and a
missing verb module is an error rather than a silently shorter verb list."""
import subprocess
import sys

import pytest

from unetlab import cli

PROBE = """
import sys
from unetlab import cli
try:
    cli.main({argv!r})
except SystemExit:
    pass
print("TORCH" if "torch" in sys.modules else "NO-TORCH")
"""


@pytest.mark.parametrize("argv", [["--help"]] + [[v, "--help"] for v in cli.VERBS])
def test_help_does_not_import_torch(argv):
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "NO-TORCH", (argv, out.stderr[-500:])
    assert "usage: unetlab" in out.stdout


def test_every_verb_is_in_the_parser():
    parser = cli.build_parser(None)
    sub = next(a for a in parser._actions if a.dest == "verb")
    assert tuple(sub.choices) == cli.VERBS


def test_a_missing_verb_module_fails_loudly(monkeypatch):
    monkeypatch.setattr(cli, "VERBS", cli.VERBS + ("nosuchverb",))
    with pytest.raises(ModuleNotFoundError, match="nosuchverb"):
        cli.build_parser(["--help"])


def test_only_the_chosen_verb_adds_its_options():
    parser = cli.build_parser(["evaluate", "--help"])
    sub = next(a for a in parser._actions if a.dest == "verb")
    evaluate_opts = {o for a in sub.choices["evaluate"]._actions for o in a.option_strings}
    predict_opts = {o for a in sub.choices["predict"]._actions for o in a.option_strings}
    assert "--metrics" in evaluate_opts
    assert predict_opts == {"-h", "--help"}
