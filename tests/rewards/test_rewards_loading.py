import functools
import textwrap
from pathlib import Path
from typing import Any

import pytest

from grpo.rewards.builtin import BUILTIN_REWARDS, accuracy, format_reward, reasoning_length
from grpo.rewards.errors import RewardSpecError
from grpo.rewards.loading import required_columns, resolve_reward, spec_function_name

USER_FILE = """
from neighbour_helpers import HALF  # a sibling module next to this file


def length_bonus(prompts, completions, **kwargs):
    return [HALF * len(c) for c in completions]


class Checker:
    @staticmethod
    def score(prompts, completions, **kwargs):
        return [1.0 for _ in completions]


NOT_A_FUNCTION = 3
"""


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    (tmp_path / "neighbour_helpers.py").write_text("HALF = 0.5\n")
    path = tmp_path / "my_rewards.py"
    path.write_text(textwrap.dedent(USER_FILE))
    return path


def test_builtin_names() -> None:
    assert resolve_reward("accuracy") is accuracy
    assert resolve_reward("format") is format_reward
    assert resolve_reward(" reasoning_length ") is reasoning_length


def test_module_spec() -> None:
    assert resolve_reward("grpo.rewards.builtin:accuracy") is accuracy
    assert resolve_reward("grpo.rewards.builtin:format_reward") is format_reward


def test_file_spec_loads_and_imports_neighbours(user_file: Path) -> None:
    fn = resolve_reward(f"{user_file}:length_bonus")
    assert fn(["p", "p"], ["ab", "abcd"]) == [1.0, 2.0]
    # Loading the same file again reuses the module, so the function is the same object.
    assert resolve_reward(f"{user_file}:length_bonus") is fn
    # Dotted attribute after the colon.
    assert resolve_reward(f"{user_file}:Checker.score")(["p"], ["c"]) == [1.0]


def test_relative_file_spec(user_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(user_file.parent)
    assert resolve_reward("my_rewards.py:length_bonus")(["p"], ["abcdef"]) == [3.0]
    assert resolve_reward("./my_rewards.py:Checker.score")(["p"], ["c"]) == [1.0]


def test_unknown_builtin_lists_valid_names() -> None:
    with pytest.raises(RewardSpecError) as err:
        resolve_reward("acuracy")
    message = str(err.value)
    assert "unknown built-in reward 'acuracy'" in message
    # Every registered name, sorted, so a new built-in cannot go missing from the hint.
    assert "(" + ", ".join(sorted(BUILTIN_REWARDS)) + ")" in message
    assert "accuracy, code, correct_steps, format, math" in message
    assert "package.module:function" in message


def test_file_without_function_name(user_file: Path) -> None:
    with pytest.raises(RewardSpecError, match="names a file but not the function"):
        resolve_reward(str(user_file))


def test_module_not_importable() -> None:
    with pytest.raises(RewardSpecError) as err:
        resolve_reward("no_such_module_for_grpo_tests.sub:fn")
    message = str(err.value)
    assert "'no_such_module_for_grpo_tests.sub:fn'" in message
    assert "cannot be imported" in message
    assert "PYTHONPATH" in message


def test_module_with_missing_dependency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "grpo_test_needs_dep.py").write_text("import grpo_test_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RewardSpecError) as err:
        resolve_reward("grpo_test_needs_dep:fn")
    assert "imports 'grpo_test_absent_dependency', which is not installed" in str(err.value)
    assert isinstance(err.value.__cause__, ModuleNotFoundError)


def test_file_missing(tmp_path: Path) -> None:
    spec = f"{tmp_path}/absent.py:fn"
    with pytest.raises(RewardSpecError) as err:
        resolve_reward(spec)
    assert f"reward spec {spec!r}" in str(err.value)
    assert "not found" in str(err.value)


def test_file_that_raises_while_loading(tmp_path: Path) -> None:
    path = tmp_path / "broken_rewards.py"
    path.write_text("def f(:\n")
    with pytest.raises(RewardSpecError) as err:
        resolve_reward(f"{path}:f")
    assert "raised SyntaxError" in str(err.value)
    assert str(path) in str(err.value)


def test_attribute_missing_lists_what_is_there(user_file: Path) -> None:
    with pytest.raises(RewardSpecError) as err:
        resolve_reward("grpo.rewards.builtin:acuracy")
    message = str(err.value)
    assert "'grpo.rewards.builtin' has no attribute 'acuracy'" in message
    assert "accuracy" in message and "format_reward" in message
    with pytest.raises(RewardSpecError, match="'Checker' has no attribute 'nope'"):
        resolve_reward(f"{user_file}:Checker.nope")


def test_not_callable(user_file: Path) -> None:
    with pytest.raises(
        RewardSpecError, match=r"'NOT_A_FUNCTION' is not callable \(its type is int\)"
    ):
        resolve_reward(f"{user_file}:NOT_A_FUNCTION")
    with pytest.raises(
        RewardSpecError, match=r"'BUILTIN_REWARDS' is not callable \(its type is dict\)"
    ):
        resolve_reward("grpo.rewards.builtin:BUILTIN_REWARDS")


@pytest.mark.parametrize("spec", ["", "   ", "module:", ":fn"])
def test_incomplete_specs(spec: str) -> None:
    with pytest.raises(RewardSpecError):
        resolve_reward(spec)


def test_spec_function_name() -> None:
    assert spec_function_name("accuracy") == "accuracy"
    assert spec_function_name("pkg.mod:my_fn") == "my_fn"
    assert spec_function_name("dir/file.py:Checker.score") == "score"


def test_required_columns() -> None:
    assert required_columns(accuracy) == {"answer"}
    assert required_columns(format_reward) == set()
    assert required_columns(reasoning_length) == set()  # target_chars has a default

    def custom(
        prompts: list[Any],
        completions: list[Any],
        answer: list[Any],
        difficulty: list[Any],
        *args: Any,
        lang: list[str],
        optional: int = 1,
        **kwargs: Any,
    ) -> list[float | None]:
        return []

    assert required_columns(custom) == {"answer", "difficulty", "lang"}
    # TRL-style functions often leave out prompts.
    assert required_columns(lambda completions, **kw: []) == set()
    # A partial that fixes a column gives it a default.
    assert required_columns(functools.partial(custom, answer=[])) == {"difficulty", "lang"}

    class CallableReward:
        def __call__(self, prompts: list[Any], completions: list[Any], label: list[Any]) -> list:
            return []

    assert required_columns(CallableReward()) == {"label"}
