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
    assert "usage: grpo {train,eval}" in out
    assert "grpo train" in out and "grpo eval" in out


def test_unknown_command_prints_usage_and_fails(capsys):
    assert main(["trian"]) == 2
    assert "usage: grpo" in capsys.readouterr().out


def test_bad_key_returns_2_and_names_key(capsys):
    assert main(["train", "algorithm.grop=1"]) == 2
    captured = capsys.readouterr()
    assert "algorithm.grop" in captured.err
    assert "config error" in captured.err
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
