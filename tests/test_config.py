"""The typed config tree: defaults, YAML, overrides, and errors that name the key."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from grpo.config import (
    BUILTIN_MODEL,
    ConfigError,
    GRPOConfig,
    OptimConfig,
    RewardConfig,
    field_docs,
    load_config,
    uses_reference_model,
)


def test_defaults_load_and_validate():
    cfg = load_config()
    assert isinstance(cfg, GRPOConfig)
    assert cfg.model.name_or_path == BUILTIN_MODEL
    assert cfg.algorithm.group_size == 8
    assert cfg.train.batch_size == 64
    assert cfg.algorithm.loss_aggregation == "grpo"  # ppo_clip's default, = seq_mean_token_mean
    assert cfg.rollout.stop == []
    assert [(r.name, r.weight) for r in cfg.rewards] == [("accuracy", 1.0), ("format", 0.2)]
    assert all(isinstance(r, RewardConfig) for r in cfg.rewards)


def test_defaults_are_not_shared_between_loads():
    a = load_config()
    a.rollout.stop.append("</answer>")
    a.rewards[0].weight = 5.0
    b = load_config()
    assert b.rollout.stop == []
    assert b.rewards[0].weight == 1.0


def test_yaml_then_overrides_later_wins(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "algorithm:\n  group_size: 4\n  beta: 0.0\n"
        "train:\n  batch_size: 16\n  steps: 7\n"
        "rollout:\n  stop: ['</answer>']\n"
    )
    cfg = load_config(path, ["train.steps=9", "algorithm.group_size=2", "train.steps=11"])
    assert cfg.train.steps == 11  # the last override of a key wins
    assert cfg.algorithm.group_size == 2  # override beats the file
    assert cfg.algorithm.beta == 0.0  # the file beats the default
    assert cfg.train.batch_size == 16
    assert cfg.rollout.stop == ["</answer>"]
    assert cfg.optim.lr == OptimConfig().lr  # untouched default


def test_override_values_use_omegaconf_grammar():
    cfg = load_config(None, ["rollout.stop=['</answer>', 'Q:']", "train.eval_max_new_tokens=32"])
    assert cfg.rollout.stop == ["</answer>", "Q:"]
    assert cfg.train.eval_max_new_tokens == 32
    cfg = load_config(None, ["data.system_prompt=null"])
    assert cfg.data.system_prompt is None


def test_unknown_key_names_it():
    with pytest.raises(ConfigError, match=r"algorithm\.grop"):
        load_config(None, ["algorithm.grop=4"])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "stepz" in str(e.value) and str(path) in str(e.value)


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"train\.steps"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(ConfigError, match=r"rollout\.ignore_eos"):
        load_config(None, ["rollout.ignore_eos=maybe"])


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.steps"])


def test_batch_size_must_hold_whole_groups():
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(None, ["algorithm.group_size=4", "train.batch_size=10"])
    cfg = load_config(None, ["algorithm.group_size=4", "train.batch_size=12"])
    assert cfg.train.batch_size == 12


def test_invalid_choice_names_key_and_choices():
    with pytest.raises(ConfigError, match=r"algorithm\.loss_aggregation") as e:
        load_config(None, ["algorithm.loss_aggregation=sum"])
    assert "token_mean" in str(e.value)
    with pytest.raises(ConfigError, match=r"model\.dtype"):
        load_config(None, ["model.dtype=float16"])


def test_group_size_one_is_rejected_except_with_a_critic():
    with pytest.raises(ConfigError, match=r"algorithm\.group_size.*advantage=gae.*takes 1"):
        load_config(None, ["algorithm.group_size=1", "train.batch_size=4"])
    ppo = ["algorithm.advantage=gae", "train.batch_size=4", "train.micro_batch_size=4"]
    assert load_config(None, [*ppo, "algorithm.group_size=1"]).algorithm.group_size == 1
    with pytest.raises(ConfigError, match=r"algorithm\.group_size.*at least 1, got 0"):
        load_config(None, [*ppo, "algorithm.group_size=0"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("rollout.temperature=0", "rollout.temperature"),
        ("rollout.top_p=1.5", "rollout.top_p"),
        ("train.micro_batch_size=0", "train.micro_batch_size"),
        ("algorithm.eps_low=1.0", "algorithm.eps_low"),
        ("algorithm.beta=-0.1", "algorithm.beta"),
        ("optim.lr=0", "optim.lr"),
        ("optim.warmup_ratio=1.0", "optim.warmup_ratio"),
        ("data.task=file", "data.train_path"),
    ],
)
def test_range_checks_name_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as e:
        load_config(missing)
    assert "nope.yaml" in str(e.value)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  steps: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML") as e:
        load_config(path)
    assert "broken.yaml" in str(e.value)


def test_rewards_list_override_replaces_the_list():
    cfg = load_config(None, ["rewards=[{name: accuracy, weight: 2}]"])
    assert len(cfg.rewards) == 1
    assert isinstance(cfg.rewards[0], RewardConfig)
    assert (cfg.rewards[0].name, cfg.rewards[0].weight, cfg.rewards[0].kwargs) == (
        "accuracy",
        2.0,
        {},
    )


def test_rewards_index_override_changes_one_entry():
    cfg = load_config(None, ["rewards.0.weight=3"])
    assert [(r.name, r.weight) for r in cfg.rewards] == [("accuracy", 3.0), ("format", 0.2)]


def test_rewards_typo_in_entry_names_the_key():
    with pytest.raises(ConfigError, match="wieght"):
        load_config(None, ["rewards=[{name: accuracy, wieght: 2}]"])
    with pytest.raises(ConfigError, match="weight"):
        load_config(None, ["rewards.0.weight=heavy"])


def test_rewards_from_yaml_with_kwargs(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("rewards:\n  - name: format\n    weight: 0.5\n    kwargs: {strict: true}\n")
    cfg = load_config(path)
    assert [(r.name, r.weight, r.kwargs) for r in cfg.rewards] == [
        ("format", 0.5, {"strict": True})
    ]


def test_empty_rewards_rejected():
    with pytest.raises(ConfigError, match="rewards"):
        load_config(None, ["rewards=[]"])


def _all_field_keys(cls: type, prefix: str = "") -> set[str]:
    """Every leaf key of the dataclass tree; list-of-dataclass fields appear as ``x[i].y``."""
    keys: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(t):
            keys |= _all_field_keys(t, key + ".")
        elif typing.get_origin(t) is list and dataclasses.is_dataclass(typing.get_args(t)[0]):
            keys.add(key)  # the list itself is documented too
            keys |= _all_field_keys(typing.get_args(t)[0], key + "[i].")
        else:
            keys.add(key)
    return keys


def test_field_docs_covers_every_field():
    rows = field_docs()
    documented = [key for key, *_ in rows]
    assert len(documented) == len(set(documented)), "a key is documented twice"
    expected = _all_field_keys(GRPOConfig)
    assert set(documented) == expected
    assert "algorithm.group_size" in expected and "rewards[i].kwargs" in expected
    for key, typ, default, doc in rows:
        assert doc.strip(), f"{key} has no doc"
        assert typ, f"{key} has no type"
        assert default != "", f"{key} has no default"


def test_field_docs_defaults_match_the_dataclasses():
    docs = {key: default for key, _, default, _ in field_docs()}
    assert docs["algorithm.group_size"] == "8"
    assert docs["model.name_or_path"] == repr(BUILTIN_MODEL)
    assert docs["train.eval_max_new_tokens"] == "None"
    assert docs["rollout.stop"] == "[]"
    assert docs["rewards"] == "[accuracy:1.0, format:0.2]"


def test_uses_reference_model():
    # built directly: load_config refuses a key the schedule does not read (tested below)
    def ref(**algorithm: object) -> bool:
        cfg = GRPOConfig()
        cfg.algorithm = dataclasses.replace(cfg.algorithm, **algorithm)
        return uses_reference_model(cfg)

    assert ref() is True  # constant beta 0.04
    assert ref(beta=0) is False
    # constant: beta_start/beta_end do not matter
    assert ref(beta=0, beta_start=0.1) is False
    # cosine: beta does not matter, either end > 0 does
    cos = "cosine"
    assert ref(beta_schedule=cos, beta=0) is True  # beta_start 0.04 by default
    assert ref(beta_schedule=cos, beta_start=0, beta_end=0) is False
    assert ref(beta_schedule=cos, beta_start=0, beta_end=0.01) is True
    assert ref(beta_schedule=cos, beta=0.5, beta_start=0, beta_end=0) is False


@pytest.mark.parametrize(
    ("override", "mode_key"),
    [
        ("data.train_path=mine.jsonl", "data.task"),
        ("data.eval_path=held.jsonl", "data.task"),
        ("data.split=test", "data.task"),
        ("data.prompt_column=question", "data.task"),
        ("data.system_prompt=Be brief.", "data.task"),
        ("algorithm.step_reward=m:f", "algorithm.advantage"),
        ("algorithm.scale_rewards=batch", "algorithm.advantage"),
        ("algorithm.beta_start=0.1", "algorithm.beta_schedule"),
        ("rollout.vllm_enforce_eager=true", "rollout.engine"),
    ],
)
def test_a_key_read_only_in_another_mode_is_an_error(override, mode_key):
    extra = {
        "algorithm.scale_rewards": ["algorithm.advantage=rloo"],
        "rollout.vllm_enforce_eager": ["rollout.engine=transformers"],
    }.get(override.split("=")[0], [])
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as err:
        load_config(None, [override, *extra])
    assert f"key '{key}': only read when {mode_key} is" in str(err.value)
    assert f"remove {key}, or set {mode_key}=" in str(err.value)


def test_train_steps_with_epochs_is_an_error():
    with pytest.raises(ConfigError, match="'train.steps': not read when train.epochs > 0"):
        load_config(None, ["train.epochs=2", "train.steps=10"])
    assert load_config(None, ["train.epochs=2"]).train.epochs == 2


def test_keys_of_the_mode_in_use_are_applied():
    cfg = load_config(None, ["data.task=file", "data.train_path=mine.jsonl", "data.split=test"])
    assert (cfg.data.train_path, cfg.data.split) == ("mine.jsonl", "test")
    cfg = load_config(None, ["algorithm.beta_schedule=cosine", "algorithm.beta_start=0.1"])
    assert cfg.algorithm.beta_start == 0.1
    # the written-out default (every key, at its default) is not refused
    assert load_config(None, ["data.train_path=null", "data.split=train"]) == load_config()


def test_gsm8k_and_file_tasks_need_a_train_path():
    for task in ("file", "gsm8k"):
        with pytest.raises(ConfigError, match=f"required when data.task is '{task}'"):
            load_config(None, [f"data.task={task}"])


def test_config_file_problems_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name_or_path: x\n dtype: auto\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line 3, column 2: not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a sentence\n")
    with pytest.raises(ConfigError, match="must be a mapping of sections.*got a str"):
        load_config(scalar)
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == load_config()
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_policy_loss_defaults_resolve_per_loss():
    from grpo.config import loss_settings
    from grpo.core import POLICY_LOSSES

    cfg = load_config()
    a = cfg.algorithm
    assert (a.policy_loss, a.eps_low, a.eps_high, a.loss_aggregation) == (
        "ppo_clip",
        0.2,
        0.2,
        "grpo",
    )
    g = load_config(None, ["algorithm.policy_loss=gspo"]).algorithm
    assert (g.eps_low, g.eps_high, g.loss_aggregation) == (3e-4, 4e-4, "grpo")
    c = load_config(None, ["algorithm.policy_loss=cispo"]).algorithm
    assert (c.eps_low, c.eps_high, c.loss_aggregation) == (1.0, 4.0, "dapo")
    # a value the user sets wins over the loss's default
    c2 = load_config(None, ["algorithm.policy_loss=cispo", "algorithm.eps_high=0.2"]).algorithm
    assert (c2.eps_low, c2.eps_high) == (1.0, 0.2)
    # the config's choices are the registry's names
    with pytest.raises(ConfigError, match="'algorithm.policy_loss'.*ppo_clip, gspo, cispo"):
        load_config(None, ["algorithm.policy_loss=sapo"])
    assert set(POLICY_LOSSES) == {"ppo_clip", "gspo", "cispo"}
    # a config object built in code (no load_config) resolves the same way
    assert loss_settings(GRPOConfig().algorithm) == (0.2, 0.2, "grpo")


@pytest.mark.parametrize(
    "override,key",
    [
        (["algorithm.policy_loss=gspo", "algorithm.eps_low=1.0"], "algorithm.eps_low"),
        (["algorithm.policy_loss=gspo", "algorithm.dual_clip_c=3"], "algorithm.dual_clip_c"),
        (["algorithm.policy_loss=cispo", "algorithm.dual_clip_c=3"], "algorithm.dual_clip_c"),
        (["algorithm.entropy_coef=-0.1"], "algorithm.entropy_coef"),
        (["rollout.replay_sampling_mask=maybe"], "rollout.replay_sampling_mask"),
        (["log.trackers=[mlflow]"], r"log.trackers\[0\]"),
        (["log.trackers=[wandb,wandb]"], "log.trackers"),
    ],
)
def test_loss_and_tracker_keys_are_checked(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, override)


def test_cispo_may_have_no_lower_bound():
    assert load_config(None, ["algorithm.policy_loss=cispo", "algorithm.eps_low=5"])


@pytest.mark.parametrize(
    "overrides,want",
    [
        ([], (0, 1.0)),  # no filter: nothing to replay
        (["rollout.top_k=20", "rollout.top_p=0.9"], (20, 0.9)),  # auto: on
        (["rollout.top_p=0.9", "rollout.replay_sampling_mask=false"], (0, 1.0)),
        (["rollout.top_k=5", "rollout.replay_sampling_mask=true"], (5, 1.0)),
        (["rollout.replay_sampling_mask=true"], (0, 1.0)),  # on, but nothing is cut
    ],
)
def test_sampling_mask_replay_follows_the_filters(overrides, want):
    from grpo.config import sampling_mask

    cfg = load_config(None, overrides)
    assert cfg.rollout.replay_sampling_mask in ("auto", "true", "false")
    assert sampling_mask(cfg) == want


def test_gae_keys_load_and_are_checked():
    cfg = load_config(
        None,
        [
            "algorithm.advantage=gae",
            "algorithm.gamma=0.99",
            "algorithm.gae_lambda=0.9",
            "critic.lr=3e-4",
            "critic.warmup_steps=2",
            "critic.value_clip=null",
        ],
    )
    assert (cfg.algorithm.gamma, cfg.algorithm.gae_lambda) == (0.99, 0.9)
    assert (cfg.critic.lr, cfg.critic.warmup_steps, cfg.critic.value_clip) == (3e-4, 2, None)
    assert cfg.critic.name_or_path == "" and load_config().critic.value_clip == 0.2


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("algorithm.gamma=1.5", "algorithm.gamma"),
        ("algorithm.gae_lambda=-0.1", "algorithm.gae_lambda"),
        ("critic.lr=0", "critic.lr"),
        ("critic.warmup_steps=-1", "critic.warmup_steps"),
        ("critic.value_clip=0", "critic.value_clip"),
        ("critic.warmup_steps=80", "critic.warmup_steps"),  # train.steps is 80
        ("critic.nme=x", "critic.nme"),
    ],
)
def test_gae_ranges_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(None, ["algorithm.advantage=gae", override])


@pytest.mark.parametrize(
    "override", ["algorithm.gamma=0.9", "critic.lr=1e-2", "critic.warmup_steps=1"]
)
def test_gae_keys_without_gae_are_an_error(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"'{key}': only read when algorithm.advantage is 'gae'"):
        load_config(None, [override])
