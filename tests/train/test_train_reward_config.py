"""Every built-in reward is selectable from the config, with its kwargs and error policy."""

from __future__ import annotations

from grpo.config import load_config
from grpo.rewards.math_reward import MathEquivalence
from grpo.rewards.sandbox.code_reward import CodeExecution
from grpo.train.preflight import build_reward_functions


def test_rewards_from_config_carry_kwargs_timeout_and_on_error(tmp_path):
    helper = tmp_path / "my_rewards.py"
    helper.write_text(
        "def short(prompts, completions, **kw):\n    return [1.0] * len(completions)\n"
    )
    cfg = load_config(
        None,
        [
            "rewards=[{name: math, kwargs: {timeout_s: 2.0, workers: 1}}, "
            "{name: code, weight: 0.5, on_error: skip, timeout_s: 30, kwargs: {timeout_s: 1.5}}, "
            f"{{name: '{helper}:short', weight: 0.1}}, {{name: self_consistency}}]"
        ],
    )
    fns = build_reward_functions(cfg)
    try:
        by_name = {f.name: f for f in fns}
        assert list(by_name) == ["math", "code", "short", "self_consistency"]
        assert isinstance(by_name["math"].fn, MathEquivalence)
        assert isinstance(by_name["code"].fn, CodeExecution)
        assert by_name["code"].weight == 0.5
        assert by_name["code"].on_error == "skip" and by_name["code"].timeout_s == 30
        assert by_name["code"].fn.limits.wall_s == 1.5
        assert by_name["math"].on_error == "raise" and by_name["math"].timeout_s is None
        assert by_name["short"].fn(["p"], ["c"]) == [1.0]
    finally:
        for f in fns:
            close = getattr(f.fn, "close", None)
            if callable(close):
                close()
