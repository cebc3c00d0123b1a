"""The error family: exit codes, the built-in bases kept for old callers, three-line briefs."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from grpo import errors
from grpo.config import ConfigError as ConfigErrorFromConfig
from grpo.data import ChatTemplateError as ChatFromData
from grpo.data import DatasetError as DatasetFromData
from grpo.rewards import RewardError as RewardFromRewards
from grpo.rewards import RewardSpecError as SpecFromRewards

SRC = Path(__file__).resolve().parents[1] / "src" / "grpo"


def test_one_family_importable_from_where_it_was():
    assert ConfigErrorFromConfig is errors.ConfigError
    assert DatasetFromData is errors.DatasetError and ChatFromData is errors.ChatTemplateError
    assert RewardFromRewards is errors.RewardError and SpecFromRewards is errors.RewardSpecError
    for cls in (
        errors.ConfigError,
        errors.DatasetError,
        errors.ChatTemplateError,
        errors.RewardSpecError,
        errors.RewardError,
        errors.ModelError,
        errors.RunDirError,
        errors.ResourceError,
    ):
        assert issubclass(cls, errors.GrpoError), cls


@pytest.mark.parametrize(
    ("cls", "code", "builtin"),
    [
        (errors.ConfigError, 2, ValueError),
        (errors.DatasetError, 2, ValueError),
        (errors.ChatTemplateError, 2, ValueError),
        (errors.RewardSpecError, 2, ValueError),
        (errors.ModelError, 2, OSError),
        (errors.RunDirError, 2, OSError),
        (errors.MissingPackageError, 2, ImportError),
        (errors.ResourceError, 1, RuntimeError),
    ],
)
def test_exit_codes_and_the_builtin_bases_kept(cls, code, builtin):
    e = cls("what is wrong", hint="what to do")
    assert e.exit_code == code and isinstance(e, builtin)
    assert str(e) == "what is wrong\n  what to do"


def test_reward_errors_are_run_time_failures_that_keep_their_fields():
    e = errors.RewardError("x", function="f", row=3, dataset_row=40, hint="h")
    assert e.exit_code == 1 and isinstance(e, RuntimeError)
    assert (e.function, e.row, e.dataset_row, e.hint) == ("f", 3, 40, "h")


def test_brief_keeps_three_lines_and_the_hint():
    e = errors.GrpoError("one\ntwo\nthree\nfour", hint="do this")
    assert e.brief() == ["one", "  ... (3 more lines; --debug shows them all)", "  do this"]
    assert errors.GrpoError("only", hint=None).brief() == ["only"]
    assert errors.GrpoError("a\nb", hint="h").brief() == ["a", "b", "  h"]


def test_a_dataset_error_brief_is_the_first_problem_and_a_count():
    problems = [f"data.jsonl line {i}: missing column 'answer'" for i in (1, 2, 5)]
    e = errors.DatasetError("\n".join(problems), problems=problems)
    assert e.brief() == [problems[0], "  ... and 2 more problems like it"]
    assert e.problems == problems


def test_errors_module_imports_nothing_so_every_layer_may_use_it():
    tree = ast.parse((SRC / "errors.py").read_text())
    imported = [
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in getattr(n, "names", [None])
    ]
    assert imported == ["__future__"]


def test_the_sandbox_harness_uses_only_the_standard_library():
    """It runs as its own process with `python -I` and must not depend on grpo or on what the
    trainer's environment has installed."""
    tree = ast.parse((SRC / "rewards" / "sandbox" / "_harness.py").read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    assert modules, "no imports found: the harness moved?"
    assert modules <= set(sys.stdlib_module_names) | {"__future__"}, modules - set(
        sys.stdlib_module_names
    )
