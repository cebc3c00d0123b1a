"""Robust execution of reward functions: timeouts, on_error, async functions, class rewards."""

from __future__ import annotations

import asyncio
import logging
import math
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from grpo.rewards import RewardError, RewardFunction, RewardSpecError, score_completions

PROMPTS = ["p0", "p1", "p2", "p3"]
COMPLETIONS = ["ok", "ok", "boom", "ok"]


def fails_on_boom(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    out = []
    for c in completions:
        if c == "boom":
            raise ValueError(f"cannot score {c!r}")
        out.append(1.0)
    return out


def test_raise_names_function_row_prompt_and_keeps_traceback() -> None:
    rf = RewardFunction("fragile", fails_on_boom)
    with pytest.raises(RewardError) as err:
        score_completions([rf], PROMPTS, COMPLETIONS, row_ids=[10, 10, 11, 11])
    message = str(err.value)
    assert "reward function 'fragile' raised ValueError: cannot score 'boom'" in message
    assert "on completion 2 of the batch (dataset row 11); prompt: 'p2', in a batch of 4" in message
    assert "on_error: skip" in message  # says how to keep going
    assert (err.value.function, err.value.row, err.value.dataset_row) == ("fragile", 2, 11)
    # The traceback of the user's function is chained below the error.
    cause = err.value.__cause__
    assert isinstance(cause, ValueError) and cause.__traceback__ is not None
    frames = [f.name for f in __import__("traceback").extract_tb(cause.__traceback__)]
    assert "fails_on_boom" in frames


def test_skip_gives_none_counts_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    fragile = RewardFunction("fragile", fails_on_boom, on_error="skip")
    steady = RewardFunction("steady", lambda prompts, completions, **kw: [0.5] * len(completions))
    with caplog.at_level(logging.DEBUG, logger="grpo.rewards"):
        scores = score_completions([fragile, steady], PROMPTS, COMPLETIONS, row_ids=[0, 0, 1, 1])
    per = scores.per_function["fragile"].tolist()
    assert per[:2] == [1.0, 1.0] and math.isnan(per[2]) and per[3] == 1.0
    # The completion keeps the other function's value; only `fragile` is missing for it.
    assert scores.total.tolist() == [1.5, 1.5, 0.5, 1.5]
    metrics = scores.metrics()
    assert metrics["rewards/fragile/errors"] == 1.0
    assert metrics["rewards/fragile/none_frac"] == 0.25
    assert metrics["rewards/steady/errors"] == 0.0
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "'fragile' raised ValueError: cannot score 'boom'" in record.getMessage()
    # the line of the user's function that raised, and no traceback on the console
    raise_line = fails_on_boom.__code__.co_firstlineno + 4  # the `raise` in fails_on_boom
    assert f"(test_rewards_robust.py line {raise_line}, in fails_on_boom)" in record.getMessage()
    assert "completion 2 of the batch (dataset row 1)" in record.getMessage()
    assert record.exc_info is None
    # the traceback is there for whoever turns on DEBUG
    [debug] = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert debug.exc_info is not None and debug.exc_info[0] is ValueError


def test_skip_alone_leaves_the_completion_out_of_its_group() -> None:
    fragile = RewardFunction("fragile", fails_on_boom, on_error="skip")
    scores = score_completions([fragile], PROMPTS, COMPLETIONS)
    assert scores.scored.tolist() == [True, True, False, True]


def test_skip_warnings_stop_after_a_few(caplog: pytest.LogCaptureFixture) -> None:
    def always(prompts: list[Any], completions: list[Any]) -> list[float]:
        raise RuntimeError("down")

    rf = RewardFunction("always", always, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="grpo.rewards"):
        for _ in range(3):
            scores = score_completions([rf], PROMPTS, COMPLETIONS)
            assert scores.errors == {"always": 4}
    assert len(caplog.records) == 3  # then only counted
    assert "only counted, in rewards/always/errors" in caplog.records[-1].getMessage()


def test_batch_only_failure() -> None:
    # Fails on batches of more than 2, never on one completion: no single row is to blame.
    def batch_bug(prompts: list[Any], completions: list[Any]) -> list[float]:
        if len(completions) > 2:
            raise IndexError("batch too big")
        return [1.0] * len(completions)

    with pytest.raises(RewardError, match="though on each completion alone it does not") as err:
        score_completions([RewardFunction("batchy", batch_bug)], PROMPTS, COMPLETIONS)
    assert err.value.row is None
    scores = score_completions(
        [RewardFunction("batchy", batch_bug, on_error="skip")], PROMPTS, COMPLETIONS
    )
    assert scores.per_function["batchy"].tolist() == [1.0] * 4 and scores.errors["batchy"] == 0


def test_sync_timeout_raise_and_skip() -> None:
    stop = threading.Event()

    def spins(prompts: list[Any], completions: list[Any]) -> list[float]:
        while not stop.is_set():  # pure Python: the timeout's interrupt stops it
            pass
        return [1.0] * len(completions)

    try:
        start = time.perf_counter()
        with pytest.raises(RewardError, match=r"'spin' did not return within timeout_s=0.2 s"):
            score_completions([RewardFunction("spin", spins, timeout_s=0.2)], PROMPTS, COMPLETIONS)
        scores = score_completions(
            [RewardFunction("spin", spins, timeout_s=0.2, on_error="skip")], PROMPTS, COMPLETIONS
        )
        # Two 0.2 s limits; the margin is for a loaded machine, far below the spin's "forever".
        assert time.perf_counter() - start < 5.0
        assert scores.errors == {"spin": 4} and not scores.scored.any()
        # The abandoned threads were interrupted, not left spinning.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and _threads("grpo-reward-spin"):
            time.sleep(0.02)
        assert not _threads("grpo-reward-spin")
    finally:
        stop.set()


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_functions_without_timeout_run_in_the_calling_thread() -> None:
    seen = []

    def where(prompts: list[Any], completions: list[Any]) -> list[float]:
        seen.append(threading.current_thread())
        return [0.0] * len(completions)

    score_completions([RewardFunction("where", where)], ["p"], ["c"])
    assert seen == [threading.current_thread()]


def test_async_functions_run_concurrently_with_each_other_and_plain_ones() -> None:
    spans: dict[str, tuple[float, float]] = {}

    async def slow_a(prompts: list[Any], completions: list[Any]) -> list[float]:
        start = time.perf_counter()
        await asyncio.sleep(0.4)
        spans["a"] = (start, time.perf_counter())
        return [1.0] * len(completions)

    async def slow_b(prompts: list[Any], completions: list[Any]) -> list[float]:
        start = time.perf_counter()
        await asyncio.sleep(0.4)
        spans["b"] = (start, time.perf_counter())
        return [2.0] * len(completions)

    def slow_plain(prompts: list[Any], completions: list[Any]) -> list[float]:
        start = time.perf_counter()
        time.sleep(0.4)
        spans["plain"] = (start, time.perf_counter())
        return [3.0] * len(completions)

    fns = [
        RewardFunction("a", slow_a),
        RewardFunction("b", slow_b),
        RewardFunction("plain", slow_plain),
    ]
    scores = score_completions(fns, ["p", "q"], ["c", "d"])
    assert scores.total.tolist() == [6.0, 6.0]
    # All three were running at one moment: each started before any of them finished.
    latest_start = max(start for start, _ in spans.values())
    earliest_end = min(end for _, end in spans.values())
    assert latest_start < earliest_end, spans


def test_async_timeout_cancels_and_own_timeout_error_is_an_error() -> None:
    cancelled = threading.Event()

    async def hangs(prompts: list[Any], completions: list[Any]) -> list[float]:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return [1.0] * len(completions)

    async def request_times_out(prompts: list[Any], completions: list[Any]) -> list[float]:
        raise TimeoutError("upstream API timed out")

    start = time.perf_counter()
    scores = score_completions(
        [RewardFunction("hangs", hangs, timeout_s=0.2, on_error="skip")], ["p"], ["c"]
    )
    assert time.perf_counter() - start < 5.0  # not the 30 s it would sleep
    assert scores.errors == {"hangs": 1} and cancelled.is_set()
    with pytest.raises(RewardError, match="raised TimeoutError: upstream API timed out"):
        score_completions([RewardFunction("api", request_times_out, timeout_s=5)], ["p"], ["c"])


def test_async_failures_are_localised() -> None:
    async def fails(prompts: list[Any], completions: list[Any]) -> list[float]:
        if "boom" in completions:
            raise KeyError("boom")
        return [1.0] * len(completions)

    scores = score_completions([RewardFunction("af", fails, on_error="skip")], PROMPTS, COMPLETIONS)
    assert scores.errors == {"af": 1}
    assert math.isnan(scores.per_function["af"][2].item())
    with pytest.raises(RewardError, match="on completion 2 of the batch") as err:
        score_completions([RewardFunction("af", fails)], PROMPTS, COMPLETIONS)
    assert isinstance(err.value.__cause__, KeyError)


def test_async_callable_objects_and_coroutine_returns() -> None:
    class Scorer:
        async def __call__(self, prompts: list[Any], completions: list[Any]) -> list[float]:
            await asyncio.sleep(0)
            return [0.25] * len(completions)

    async def inner(completions: list[Any]) -> list[float]:
        return [0.75] * len(completions)

    def returns_coroutine(prompts: list[Any], completions: list[Any]) -> Any:
        return inner(completions)

    a = RewardFunction("obj", Scorer())
    b = RewardFunction("coro", returns_coroutine)
    assert a._is_async and not b._is_async
    scores = score_completions([a, b], ["p"], ["c"])
    assert scores.total.tolist() == [1.0]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_contract_violations_always_raise(on_error: str) -> None:
    def short(prompts: list[Any], completions: list[Any]) -> list[float]:
        return [1.0]

    def text(prompts: list[Any], completions: list[Any]) -> list[Any]:
        return ["1.0"] * len(completions)

    with pytest.raises(RewardError, match="'short' returned 1 values for 2 completions"):
        score_completions([RewardFunction("short", short, on_error=on_error)], ["p", "q"], "ab")
    with pytest.raises(RewardError, match=r"'text' returned '1.0' \(a str\).*must be numbers"):
        score_completions([RewardFunction("text", text, on_error=on_error)], ["p"], ["a"])


def test_settings_are_validated() -> None:
    with pytest.raises(RewardSpecError, match="timeout_s must be a positive number"):
        RewardFunction("x", fails_on_boom, timeout_s=0)
    with pytest.raises(RewardSpecError, match="timeout_s must be a positive number"):
        RewardFunction("x", fails_on_boom, timeout_s=True)
    with pytest.raises(RewardSpecError, match=r"on_error must be one of \('raise', 'skip'\)"):
        RewardFunction("x", fails_on_boom, on_error="ignore")
    rf = RewardFunction.from_spec("format", timeout_s=3, on_error="skip")
    assert (rf.timeout_s, rf.on_error) == (3.0, "skip")


USER_CLASS = """
    BUILT = []

    class LengthReward:
        def __init__(self, scale: float = 1.0):
            BUILT.append(scale)
            self.scale = scale

        def __call__(self, prompts, completions, **columns):
            return [self.scale * len(c) for c in completions]

        def batch_metrics(self):
            return {"calls": 1.0}

    class Broken:
        def __init__(self, path: str):
            raise FileNotFoundError(path)
"""


def test_class_rewards_are_built_once_with_their_kwargs(tmp_path: Path) -> None:
    path = tmp_path / "class_rewards.py"
    path.write_text(textwrap.dedent(USER_CLASS))
    rf = RewardFunction.from_spec(f"{path}:LengthReward", kwargs={"scale": 0.5})
    assert rf.name == "LengthReward" and rf.kwargs == {}
    module = __import__("sys").modules[type(rf.fn).__module__]
    for _ in range(2):
        scores = score_completions([rf], ["p", "q"], ["ab", "abcd"])
    assert module.BUILT == [0.5]  # built once, called twice
    assert scores.per_function["LengthReward"].tolist() == [1.0, 2.0]
    assert scores.metrics()["rewards/LengthReward/calls"] == 1.0
    with pytest.raises(RewardSpecError, match=r"building LengthReward\(\*\*\{'scael': 2\}\)"):
        RewardFunction.from_spec(f"{path}:LengthReward", kwargs={"scael": 2})
    with pytest.raises(RewardSpecError, match="raised FileNotFoundError: /nowhere") as err:
        RewardFunction.from_spec(f"{path}:Broken", kwargs={"path": "/nowhere"})
    assert "constructor's parameters (path)" in str(err.value)


def test_failing_batch_metrics_do_not_stop_scoring(caplog: pytest.LogCaptureFixture) -> None:
    class Odd:
        def __call__(self, prompts: list[Any], completions: list[Any]) -> list[float]:
            return [1.0] * len(completions)

        def batch_metrics(self) -> dict[str, float]:
            raise RuntimeError("metrics broke")

    with caplog.at_level(logging.WARNING, logger="grpo.rewards"):
        scores = score_completions([RewardFunction("odd", Odd())], ["p"], ["c"])
    assert scores.total.tolist() == [1.0]
    assert "batch_metrics() raised" in caplog.text
