"""The `code` reward: code extraction, test formats, scoring, and the sandbox's plumbing."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest

from grpo.rewards import (
    CodeExecution,
    RewardFunction,
    SandboxLimits,
    extract_code,
    parse_tests,
    run_in_sandbox,
    score_completions,
)
from grpo.rewards.sandbox.launcher import SandboxError, missing_isolation

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox targets Linux")

FAST = SandboxLimits(wall_s=3.0, memory_mb=256, max_processes=8, max_output_bytes=65536)
ADD = "```python\ndef add(a, b):\n    return a + b\n```"
ADD_TESTS = "import math\n\nassert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(2, 2) == 5\n"


def reward(**kwargs: object) -> CodeExecution:
    settings = {"timeout_s": 3.0, "memory_mb": 256, "max_processes": 8, "workers": 2}
    settings.update(kwargs)
    return CodeExecution(**settings)  # type: ignore[arg-type]


# --- extraction and test formats ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Here:\n```python\nx = 1\n```\nDone.", "x = 1\n"),
        ("```py\nfirst = 1\n```\nbetter:\n```python\nsecond = 2\n```", "second = 2\n"),
        ("```\nuntagged = 1\n```", "untagged = 1\n"),
        ("```python\nkept = 1\n```\nrun it with\n```bash\npython x.py\n```", "kept = 1\n"),
        ("cut off:\n```python\ndef f():\n    return 1", "def f():\n    return 1"),
        ("~~~python\ntilde = 1\n~~~", "tilde = 1\n"),
        ("no code at all", None),
        ("```bash\nls\n```", None),
        ("```python\n\n```", None),
    ],
)
def test_extract_code(text: str, expected: str | None) -> None:
    assert extract_code(text) == expected


def test_parse_tests_forms() -> None:
    suite = parse_tests(ADD_TESTS)
    assert suite is not None and suite.mode == "assert" and suite.setup == "import math"
    assert [c["test"] for c in suite.cases] == [
        "assert add(1, 2) == 3",
        "assert add(-1, 1) == 0",
        "assert add(2, 2) == 5",
    ]
    listed = parse_tests(["assert f(1) == 1", "assert f(2) == 4"])
    assert listed is not None and len(listed.cases) == 2
    io_pairs = parse_tests([{"input": "1 2\n", "output": "3\n"}])
    assert io_pairs is not None and io_pairs.mode == "io"
    apps = parse_tests(json.dumps({"inputs": ["1\n", ["2", "3"]], "outputs": ["1", 5]}))
    assert apps is not None and [dict(c) for c in apps.cases] == [
        {"input": "1\n", "output": "1"},
        {"input": "2\n3", "output": "5"},
    ]
    script = parse_tests("check(candidate)")  # no assert: the whole script is one test
    assert script is not None and len(script.cases) == 1
    for bad in ["", "assert (", ["assert ("], {"inputs": [1]}, 42, [], [{"input": "x"}]]:
        assert parse_tests(bad) is None, bad


# --- scoring --------------------------------------------------------------------------------------


def test_fraction_of_tests_passed() -> None:
    code = reward()
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    crash = "```python\nraise SystemExit(3)\n```"
    scores = code(["q"] * 5, [ADD, wrong, "no code", crash, ADD], [ADD_TESTS] * 4 + ["assert ("])
    # a+b passes add(1,2)==3 and add(-1,1)==0 but not add(2,2)==5; a-b passes none of them.
    assert scores[0] == pytest.approx(2 / 3)
    assert scores[2] == 0.0 and scores[3] == 0.0
    assert scores[4] is None  # the tests of that row cannot be read: a data fault
    statuses = [[o.status for o in r.outcomes] if r else None for r in code.last_results]
    assert statuses[0] == ["passed", "passed", "failed"]
    assert statuses[1] == ["failed", "failed", "failed"] and scores[1] == 0.0
    assert statuses[3] == ["error"] * 3
    assert statuses[2] is None and statuses[4] is None
    metrics = code.batch_metrics()
    assert metrics["no_code_frac"] == pytest.approx(1 / 5)
    assert metrics["pass_frac"] == pytest.approx(2 / 9)
    assert metrics["timeout_frac"] == 0.0


def test_stdin_stdout_tests() -> None:
    program = "```python\nimport sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\n```"
    tests = [
        {"input": "1 2\n", "output": "3\n"},
        {"input": "10 5", "output": "15   \n\n"},  # trailing spaces and blank lines do not count
        {"input": "2 2\n", "output": "5\n"},
    ]
    exits_early = "```python\nprint(int(input()) * 2)\nexit()\n```"
    scores = reward()(["q", "q"], [program, exits_early], [tests, [{"input": "4", "output": "8"}]])
    assert scores == [pytest.approx(2 / 3), 1.0]


def test_tests_are_isolated_from_each_other() -> None:
    # Each test runs in a fresh process: state one test changes is not seen by the next.
    program = (
        "```python\ncounter = [0]\ndef bump():\n    counter[0] += 1\n    return counter[0]\n```"
    )
    tests = ["assert bump() == 1", "assert bump() == 1"]
    assert reward()(["q"], [program], [tests]) == [1.0]


def test_identical_programs_run_once() -> None:
    code = reward()
    scores = code(["q"] * 4, [ADD] * 4, [ADD_TESTS] * 4)
    assert scores == [pytest.approx(2 / 3)] * 4
    assert len({id(r) for r in code.last_results}) == 1


def test_builds_from_config_entry() -> None:
    rf = RewardFunction.from_spec("code", kwargs={"timeout_s": 2.0, "workers": 1})
    assert isinstance(rf.fn, CodeExecution) and rf.fn.limits.wall_s == 2.0
    assert rf.required_columns() == {"tests"}
    scores = score_completions([rf], ["q"], [ADD], {"tests": [ADD_TESTS]})
    assert scores.per_function["code"].tolist() == [pytest.approx(2 / 3)]
    assert "rewards/code/pass_frac" in scores.metrics()


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="sandbox limits out of range: wall_s=0"):
        CodeExecution(timeout_s=0)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        CodeExecution(workers=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        run_in_sandbox("x = 1", [{"test": "pass"}], mode="bash")


# --- the sandbox's plumbing -----------------------------------------------------------------------


def test_temporary_directory_is_removed() -> None:
    before = set(Path(tempfile.gettempdir()).glob("grpo-sandbox-*"))
    program = (
        "open('notes.txt', 'w').write('hi')\nimport os\nassert os.listdir('.') == ['notes.txt']"
    )
    result = run_in_sandbox(program, [{"test": "pass"}], mode="assert", limits=FAST)
    assert result.passed == 1
    assert set(Path(tempfile.gettempdir()).glob("grpo-sandbox-*")) == before


def test_environment_is_bare(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "secret-token")
    program = "import os\nassert 'HF_TOKEN' not in os.environ, 'leaked'"
    assert run_in_sandbox(program, [{"test": "pass"}], mode="assert", limits=FAST).passed == 1


def test_isolation_report() -> None:
    result = run_in_sandbox("x = 1", [{"test": "assert x == 1"}], mode="assert", limits=FAST)
    assert result.passed == 1
    assert {"network", "pid", "read_only_root", "private_tmp", "user", "unprivileged"} <= set(
        result.isolation
    )
    # On Linux as root every layer holds; elsewhere the list says which do not.
    assert isinstance(missing_isolation(result.isolation), list)


def test_require_isolation(monkeypatch: pytest.MonkeyPatch) -> None:
    import grpo.rewards.sandbox.code_reward as module

    monkeypatch.setattr(module, "missing_isolation", lambda isolation: ["network"])
    with pytest.raises(SandboxError, match="require_isolation is set"):
        reward(require_isolation=True)(["q"], [ADD], [ADD_TESTS])
    assert reward()(["q"], [ADD], [ADD_TESTS]) == [pytest.approx(2 / 3)]  # only a warning


def test_a_broken_harness_is_a_sandbox_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import grpo.rewards.sandbox.launcher as module

    broken = tmp_path / "harness.py"
    broken.write_text("raise SystemExit('no report')\n")
    monkeypatch.setattr(module, "HARNESS", broken)
    with pytest.raises(SandboxError, match="without a report"):
        run_in_sandbox("x = 1", [{"test": "pass"}], mode="assert", limits=FAST)
