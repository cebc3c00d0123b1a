"""The command line: help text, usage, and config errors reported before any heavy import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from grpo.cli import main
from grpo.config import field_docs

SRC = Path(__file__).resolve().parents[1] / "src"


def test_train_help_lists_every_key_with_default(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for key, typ, default, doc in field_docs():
        # the key line carries the doc, the next line the type and default
        idx = [i for i, line in enumerate(lines) if line.split() and line.split()[0] == key]
        assert idx, f"{key} missing from --help"
        i = idx[0]
        assert doc in lines[i]
        assert f"({typ}, default {default})" in lines[i + 1], key


def test_train_short_help_flag(capsys):
    assert main(["train", "-h"]) == 0
    assert "algorithm.group_size" in capsys.readouterr().out


def test_no_arguments_prints_usage(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: grpo {train,eval" in out
    assert "grpo train" in out and "grpo eval" in out


def test_unknown_command_names_itself_and_fails(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown command 'trian' (did you mean 'train'?)")
    assert "the commands are train, eval" in err and "grpo --help" in err
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'; the commands" in capsys.readouterr().err


def test_version(capsys):
    import grpo

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"grpo {grpo.__version__}"


def test_every_eval_option_has_help():
    from grpo.cli import _eval_parser

    for action in _eval_parser()._actions:
        assert action.help and action.help.strip(), action.option_strings or action.dest


def test_train_help_and_readme_agree_on_the_demo_time(capsys):
    from grpo.cli import DEMO_DURATION

    assert main(["train", "--help"]) == 0
    assert DEMO_DURATION in capsys.readouterr().out
    readme = (SRC.parent / "README.md").read_text()
    assert DEMO_DURATION in readme, "README's make demo line and grpo train --help disagree"
    assert "a few minutes" not in readme


def test_usage_lists_every_command_from_the_dispatch_table(capsys):
    from grpo.cli import COMMANDS

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"grpo {name} " in out


def test_interrupt_is_one_line_and_130(capsys, monkeypatch):
    from grpo import cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "train", interrupted)
    monkeypatch.setenv("GRPO_DEBUG", "0")
    assert main(["train"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "error: interrupted (Ctrl-C)\n" and captured.out == ""


def test_an_unexpected_error_is_short_and_says_how_to_see_more(capsys, monkeypatch):
    from grpo import cli

    def buggy(argv):
        raise TypeError("unsupported operand\nsecond line")

    monkeypatch.setitem(cli.COMMANDS, "train", buggy)
    monkeypatch.setenv("GRPO_DEBUG", "0")
    assert main(["train"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: TypeError: unsupported operand"
    assert "--debug" in err[1] and len(err) == 2 and "Traceback" not in "\n".join(err)
    monkeypatch.setenv("GRPO_DEBUG", "1")
    assert main(["train"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-2] == "error: TypeError: unsupported operand"


def test_bad_key_returns_2_and_names_key(capsys):
    assert main(["train", "algorithm.grop=1"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: override 'algorithm.grop=1'")
    assert "algorithm.grop" in captured.err
    assert captured.out == ""


def test_unknown_option_and_missing_config_path(capsys, tmp_path):
    assert main(["train", "--lr", "3"]) == 2
    assert "--lr" in capsys.readouterr().err
    assert main(["train", "--config"]) == 2
    assert "--config" in capsys.readouterr().err
    missing = tmp_path / "absent.yaml"
    assert main(["train", f"--config={missing}"]) == 2
    assert "absent.yaml" in capsys.readouterr().err


def test_config_error_stops_before_any_model_code():
    """A typo must fail fast: neither the training loop nor torch is imported."""
    code = textwrap.dedent(
        """
        import json, sys
        from grpo.cli import main
        rc = main(["train", "algorithm.grop=1"])
        mods = [m for m in ("grpo.train.loop", "grpo.train.models", "torch", "transformers")
                if m in sys.modules]
        print(json.dumps({"rc": rc, "loaded": mods}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"rc": 2, "loaded": []}
    assert "algorithm.grop" in proc.stderr
