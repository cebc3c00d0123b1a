"""preflight: what it returns (so setup does nothing twice) and the checks it makes itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpo.config import load_config
from grpo.errors import ConfigError, DatasetError, RunDirError
from grpo.train.preflight import check_output_dir, preflight
from grpo.train.task_data import tokenize_prompts


def cfg_for(tmp_path: Path, *overrides: str):
    return load_config(
        None,
        [
            f"train.output_dir={tmp_path}/run-{{timestamp}}",
            "data.num_train_prompts=16",
            "data.num_eval_prompts=4",
            "train.batch_size=16",
            *overrides,
        ],
    )


def test_returns_what_setup_needs_and_creates_nothing(tmp_path):
    pre = preflight(cfg_for(tmp_path))
    assert [rf.name for rf in pre.reward_fns] == ["accuracy", "format"]
    assert pre.step_reward is None
    assert len(pre.train_rows) == 16 and len(pre.eval_rows) == 4
    assert pre.model_path.endswith("tiny-arith") and pre.tokenizer.padding_side == "left"
    # the token ids are those of the rendered prompts, one list per row
    expected = tokenize_prompts(pre.train_rows, pre.tokenizer, prompt_column="prompt",
                                system_prompt=None)  # fmt: skip
    assert pre.train_prompt_ids == expected
    assert pre.output_dir.parent == tmp_path and pre.output_dir.name.startswith("run-2")
    assert not pre.output_dir.exists() and list(tmp_path.iterdir()) == []


def test_output_dir_checks(tmp_path):
    assert check_output_dir(str(tmp_path / "a" / "b")) == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # checked, not made
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        check_output_dir(str(tmp_path / "file"))
    with pytest.raises(RunDirError, match=r"under .*file, which is a file"):
        check_output_dir(str(tmp_path / "file" / "deeper" / "run"))
    with pytest.raises(RunDirError, match="cannot write in /proc"):
        check_output_dir("/proc/grpo-run")


def test_duplicate_rewards_are_named(tmp_path):
    cfg = cfg_for(tmp_path, "rewards=[{name: format}, {name: format, weight: 2}]")
    with pytest.raises(ConfigError, match=r"the functions \['format'\] appear twice"):
        preflight(cfg)


def test_a_reward_column_the_builtin_task_lacks(tmp_path):
    path = tmp_path / "r.py"
    path.write_text("def needs_label(prompts, completions, label):\n    return [0.0]\n")
    cfg = cfg_for(tmp_path, f"rewards=[{{name: '{path}:needs_label'}}]")
    with pytest.raises(DatasetError, match=r"'needs_label' needs columns \['label'\]"):
        preflight(cfg)


def test_a_system_prompt_for_plain_string_prompts_is_an_error(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"Q{i}", "answer": "1"}) + "\n" for i in range(4))
    )
    cfg = load_config(
        None,
        [
            "data.task=file",
            f"data.train_path={data}",
            "data.system_prompt=Be brief.",
            "train.batch_size=16",
            f"train.output_dir={tmp_path}/run",
        ],
    )
    with pytest.raises(ConfigError, match="data.system_prompt.*plain strings"):
        preflight(cfg)


def test_a_prompt_longer_than_max_model_len(tmp_path):
    with pytest.raises(ConfigError, match=r"rollout.max_model_len.*prompt \d+ \(0-based\)"):
        preflight(cfg_for(tmp_path, "rollout.max_model_len=5"))


def test_probe_can_be_skipped(tmp_path):
    path = tmp_path / "r.py"
    path.write_text("def boom(prompts, completions, **kw):\n    raise ValueError('x')\n")
    cfg = cfg_for(tmp_path, f"rewards=[{{name: '{path}:boom'}}]")
    assert preflight(cfg, probe=False).reward_fns[0].name == "boom"
