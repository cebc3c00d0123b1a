"""The typed configuration tree, loaded from YAML with ``key=value`` overrides.

One dataclass per section (model, data, rollout, algorithm, critic, rewards, optim, train, log,
launch).
OmegaConf does the merging and type checking; this module adds the documentation of each field
(``--help``), the checks that span several fields, and error messages that name the key.
Only ``cli`` and ``train`` read a config; everything below them takes plain arguments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from grpo.errors import ConfigError

BUILTIN_MODEL = "builtin:tiny-arith"


def _f(default: Any, doc: str) -> Any:
    """A dataclass field with a one-line doc shown by ``grpo train --help``."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: _copy(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return dataclasses.replace(value) if dataclasses.is_dataclass(value) else value


@dataclass
class ModelConfig:
    name_or_path: str = _f(
        BUILTIN_MODEL,
        "Hugging Face causal LM: a local directory, a hub id, or builtin:tiny-arith (shipped)",
    )
    dtype: str = _f(
        "auto",
        "compute precision: auto (bf16 where the hardware has it), bfloat16, float32",
    )
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")
    attn_implementation: str = _f(
        "auto",
        "attention kernel: auto (SDPA; on CPU, matmul attention where a gradient is needed), "
        "or a transformers name: sdpa, eager, flash_attention_2, ...",
    )
    trust_remote_code: bool = _f(False, "allow model code from the model's repository")
    lora_rank: int = _f(
        0, "LoRA rank r (peft; needs grpo[lora]); 0 trains every weight (full fine-tuning)"
    )
    lora_alpha: float = _f(32.0, "LoRA alpha: the adapter's output is scaled by alpha / rank")
    lora_dropout: float = _f(0.0, "dropout on the LoRA branch's input")
    lora_target_modules: list[str] = _f(
        [], "modules that get adapters (e.g. [q_proj, v_proj]); empty: every linear layer"
    )


@dataclass
class DataConfig:
    task: str = _f(
        "arithmetic",
        "built-in task (arithmetic; multistep, two-digit chains with headroom for RL; gsm8k) "
        "or 'file' to read train_path/eval_path",
    )
    train_path: str | None = _f(None, "prompts: .jsonl, .parquet, or a datasets name/dir")
    eval_path: str | None = _f(None, "held-out prompts in the same formats (optional)")
    split: str = _f("train", "split to read when train_path is a datasets name")
    prompt_column: str = _f("prompt", "column holding a string or a list of chat messages")
    system_prompt: str | None = _f(None, "system message prepended to chat-format prompts")
    num_train_prompts: int = _f(4000, "built-in task: number of RL prompts to draw")
    num_eval_prompts: int = _f(200, "evaluation prompts (built-in task draws; files truncate)")
    shuffle: bool = _f(True, "shuffle the prompts every pass")


@dataclass
class RolloutConfig:
    engine: str = _f(
        "auto",
        "generation engine: auto (vLLM if installed, but transformers with static decoding for "
        "models under 12M parameters on CPU), vllm, transformers",
    )
    temperature: float = _f(1.0, "sampling temperature (> 0)")
    top_p: float = _f(1.0, "nucleus sampling threshold; 1 disables")
    top_k: int = _f(0, "top-k sampling; 0 disables")
    max_new_tokens: int = _f(64, "completion length limit in tokens")
    stop: list[str] = _f([], "stop strings; the completion keeps the matched string")
    ignore_eos: bool = _f(False, "benchmarks only: sample to max_new_tokens past EOS")
    max_batch_rows: int = _f(256, "most sequences generated at once (vLLM: max_num_seqs)")
    vllm_memory_fraction: float = _f(
        0.3, "vLLM: share of GPU memory (CPU: of RAM, capped by need) for weights and KV cache"
    )
    max_model_len: int = _f(0, "vLLM: prompt + completion tokens; 0: longest prompt + limit")
    vllm_enforce_eager: bool = _f(False, "vLLM: no compilation / CUDA graphs (faster start)")
    static_decode: str = _f(
        "auto",
        "transformers engine: decode from a copy of the policy in the compute dtype with a "
        "preallocated KV cache and a compiled one-token step: auto (on for one CPU process with "
        "a C++ compiler, not with train.deterministic), true, false (sample from the policy "
        "module itself, eager)",
    )
    replay_sampling_mask: str = _f(
        "auto",
        "trainer log-probs over the top-k/top-p kept set the sampler drew from: auto (on when "
        "top_k > 0 or top_p < 1), true, false",
    )


@dataclass
class AlgorithmConfig:
    group_size: int = _f(8, "G: completions sampled per prompt")
    advantage: str = _f(
        "grpo",
        "advantage estimator: grpo, dr_grpo, batch_std, rloo, process (step rewards), gae (PPO "
        "with a learned critic, see critic.*)",
    )
    scale_rewards: str = _f("group", "grpo only: std that scales advantages: group, batch, none")
    advantage_eps: float = _f(1e-4, "eps in A = (r - mean) / (std + eps)")
    beta: float = _f(0.04, "KL penalty weight; 0 loads no reference model")
    beta_schedule: str = _f("constant", "constant (beta) or cosine (beta_start -> beta_end)")
    beta_start: float = _f(0.04, "cosine schedule: beta for the first 10% of steps")
    beta_end: float = _f(0.0, "cosine schedule: beta after 80% of steps")
    kl_estimator: str = _f("k3", "KL estimator: k1, k2, k3 (DeepSeekMath uses k3)")
    policy_loss: str = _f(
        "ppo_clip",
        "ppo_clip (PPO clipped surrogate per token), gspo (sequence ratio, arXiv 2507.18071), "
        "cispo (clipped IS weight on REINFORCE, arXiv 2506.13585)",
    )
    eps_low: float | None = _f(
        None, "clip range below 1; default: policy_loss's (ppo_clip 0.2, gspo 3e-4, cispo 1: none)"
    )
    eps_high: float | None = _f(
        None,
        "clip range above 1 (DAPO clip-higher: 0.28); default: ppo_clip 0.2, gspo 4e-4, cispo 4",
    )
    loss_aggregation: str | None = _f(
        None,
        "grpo/seq_mean_token_mean (paper), bnpo (micro-batch token mean), dapo/token_mean, "
        "dr_grpo/seq_mean_token_sum_norm; default: policy_loss's (cispo: dapo, others: grpo)",
    )
    entropy_coef: float = _f(
        0.0, "entropy bonus: subtract coef * entropy, reduced like the loss; 0 off"
    )
    num_iterations: int = _f(1, "mu: policy updates per rollout batch")
    tis_cap: float | None = _f(
        None, "truncated importance sampling: weight tokens by min(pi_old/pi_engine, cap); vLLM"
    )
    dual_clip_c: float | None = _f(
        None, "dual clip for negative advantages (ratio cap c > 1, e.g. 3)"
    )
    kl_in_reward: bool = _f(
        False,
        "subtract beta * KL from the reward (PPO style) instead of the loss; gae: per token",
    )
    gamma: float = _f(1.0, "advantage=gae: discount per token")
    gae_lambda: float = _f(0.95, "advantage=gae: GAE lambda (1: Monte Carlo, 0: one-step TD)")
    mask_truncated: bool = _f(False, "leave completions cut at max_new_tokens out of the loss")
    dynamic_sampling_rounds: int = _f(
        0, "DAPO dynamic sampling: up to N extra rounds to replace zero-variance groups; 0 off"
    )
    step_reward: str = _f("", "advantage=process: function returning (reward, char_end) steps")
    step_reward_kwargs: dict[str, Any] = _f({}, "keyword arguments for step_reward")


@dataclass
class CriticConfig:
    """The value model of ``algorithm.advantage=gae`` (PPO with a critic); unused otherwise."""

    name_or_path: str = _f(
        "", "causal LM whose body starts the critic; empty: the policy's weights (fresh head)"
    )
    lr: float = _f(1e-3, "critic learning rate (AdamW, constant; betas and decay from optim)")
    warmup_steps: int = _f(0, "first N steps update the critic only (the policy waits)")
    value_clip: float | None = _f(
        0.2, "PPO value clipping: |V - V_old| <= value_clip in the loss; null disables"
    )


@dataclass
class RewardConfig:
    name: str = _f("accuracy", "built-in name, package.module:function or path/file.py:function")
    weight: float = _f(1.0, "weight in the summed reward")
    kwargs: dict[str, Any] = _f({}, "keyword arguments passed to the function")
    timeout_s: float | None = _f(None, "per-call time limit in seconds; none by default")
    on_error: str = _f("raise", "raise: stop the run; skip: score None and count it")


@dataclass
class OptimConfig:
    lr: float = _f(1e-4, "peak learning rate (AdamW)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.99, "AdamW beta2")
    warmup_ratio: float = _f(0.05, "fraction of steps with linear LR warm-up")
    min_lr_ratio: float = _f(0.1, "cosine decay ends at lr * min_lr_ratio")
    max_grad_norm: float = _f(1.0, "clip the global grad norm; 0 disables")


@dataclass
class TrainConfig:
    steps: int = _f(80, "RL steps: one rollout batch each, with num_iterations updates on it")
    epochs: float = _f(
        0.0, "passes over the training prompts; > 0 sets the number of steps (train.steps unused)"
    )
    batch_size: int = _f(64, "completions per step (prompts per step = batch_size / group_size)")
    micro_batch_size: int = _f(64, "most sequences per forward/backward pass")
    micro_batch_tokens: int | str = _f(
        "auto",
        "token budget per pass (rows x padded width), rows packed by length; 0: by rows only; "
        "auto: from free memory, and on a CPU at most the pass size that runs fastest there",
    )
    seed: int = _f(0, "random seed for sampling, shuffling and the built-in task")
    output_dir: str = _f("runs/{timestamp}", "run directory; {timestamp} is filled in")
    eval_every: int = _f(5, "evaluate every N steps (0: only before and after)")
    eval_max_new_tokens: int | None = _f(None, "evaluation length limit (default: rollout's)")
    save_final: bool = _f(True, "save the final model and tokenizer to <output_dir>/final")
    save_every: int = _f(20, "write a checkpoint every N steps (and on SIGTERM/Ctrl-C); 0: never")
    keep_last: int = _f(2, "checkpoints kept in <output_dir>/checkpoints (older ones deleted)")
    resume: str = _f(
        "",
        "auto: continue from the latest checkpoint in output_dir (fresh start if none); never: "
        "start over (a previous run there is moved aside); or a checkpoint directory",
    )
    deterministic: bool = _f(
        False, "bit-identical reruns on CPU: deterministic kernels, fixed threads (slower)"
    )
    threads: int = _f(0, "torch CPU threads; 0 keeps torch's default")
    reuse_freed_memory: bool = _f(
        True,
        "glibc: keep freed memory for reuse instead of unmapping it (fewer page faults in CPU "
        "training; the resident size stays at its peak)",
    )
    compile: str = _f(
        "auto",
        "torch.compile the decoder layers: auto (on for one CPU process with a C++ compiler, "
        "unless the engine samples from the policy module itself or train.deterministic), "
        "true, false",
    )
    time_limit_minutes: float = _f(0.0, "stop training early after this wall time; 0: none")


@dataclass
class LogConfig:
    progress_bar: bool = _f(
        True, "a progress bar on a terminal; otherwise (or when false) a line every log_every steps"
    )
    log_every: int = _f(10, "steps between one-line summaries when no progress bar is shown")
    samples_per_step: int = _f(4, "completions written to samples.jsonl each step")
    plot: bool = _f(True, "write curves.png at the end of the run")
    trackers: list[str] = _f(
        [], "experiment trackers: tensorboard, wandb (extras grpo[tensorboard], grpo[wandb])"
    )
    wandb_project: str = _f("", "W&B project; empty: WANDB_PROJECT or W&B's default")


@dataclass
class LaunchConfig:
    """How ``grpo launch local|ray|slurm`` starts the trainer; ``grpo train`` ignores it."""

    nnodes: int = _f(1, "machines in the job (local: start `grpo launch local` on each)")
    nproc_per_node: int = _f(1, "trainer processes per machine (one per GPU)")
    node_rank: int = _f(0, "local, nnodes > 1: this machine's index, 0 .. nnodes-1")
    master_addr: str = _f("127.0.0.1", "local, nnodes > 1: address of node 0 (static rendezvous)")
    master_port: int = _f(
        0, "rendezvous port; 0: a free one (needed explicitly for local with nnodes > 1)"
    )
    ray_address: str = _f("", "ray: empty starts a local Ray cluster; 'auto' or host:port joins")
    cpus_per_rank: int = _f(
        1, "CPUs reserved per rank (Ray actor num_cpus; Slurm --cpus-per-task = this x nproc)"
    )
    gpus_per_node: int = _f(0, "GPUs reserved per machine (Slurm --gpus-per-node, Ray); 0: CPU")
    partition: str = _f("", "slurm --partition; empty: the cluster's default")
    time: str = _f("", "slurm --time limit, e.g. 04:00:00; empty: the partition's default")
    account: str = _f("", "slurm --account; empty: none")
    job_name: str = _f("grpo", "slurm --job-name")
    sbatch_lines: list[str] = _f([], "slurm: extra #SBATCH options, e.g. ['--qos=high', '--mem=0']")
    container_image: str = _f(
        "", "slurm: run each node's torchrun in this image (pyxis srun --container-image)"
    )
    container_mounts: str = _f(
        "", "slurm with container_image: --container-mounts; empty: the working directory"
    )
    signal_before_s: int = _f(
        120, "slurm: SIGTERM this many seconds before the time limit (--signal=TERM@N)"
    )
    stop_grace_s: int = _f(30, "seconds a stopped rank gets after SIGTERM (to save) before SIGKILL")
    log_dir: str = _f("", "per-rank logs and exit records; empty: <train.output_dir>/logs")
    dry_run: bool = _f(False, "print what would be run or submitted, start nothing")
    wait: bool = _f(True, "stream rank 0's log and return the job's exit code; slurm false: submit")


def _default_rewards() -> list[RewardConfig]:
    return [RewardConfig("accuracy", 1.0), RewardConfig("format", 0.2)]


@dataclass
class GRPOConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    rewards: list[RewardConfig] = field(
        default_factory=_default_rewards,
        metadata={"doc": "reward functions: a list of {name, weight, kwargs}"},
    )
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)


_CHOICES: dict[str, tuple[str, ...]] = {
    "model.dtype": ("auto", "bfloat16", "float32"),
    "data.task": ("arithmetic", "multistep", "gsm8k", "file"),
    "rollout.engine": ("auto", "vllm", "transformers"),
    "algorithm.advantage": ("grpo", "dr_grpo", "batch_std", "rloo", "process", "gae"),
    "algorithm.scale_rewards": ("group", "batch", "none"),
    "algorithm.beta_schedule": ("constant", "cosine"),
    "algorithm.kl_estimator": ("k1", "k2", "k3"),
    "algorithm.policy_loss": ("ppo_clip", "gspo", "cispo"),
    "rollout.replay_sampling_mask": ("auto", "true", "false"),
    "train.compile": ("auto", "true", "false"),
    "rollout.static_decode": ("auto", "true", "false"),
    "algorithm.loss_aggregation": (
        "grpo",
        "bnpo",
        "dapo",
        "dr_grpo",
        "seq_mean_token_mean",
        "token_mean",
        "seq_mean_token_sum_norm",
    ),
}


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> GRPOConfig:
    """Defaults, then the YAML file, then ``key=value`` overrides; validated.

    Raises ``ConfigError`` naming the key for an unknown key, a wrong type, or an impossible
    combination, before anything heavy is loaded.
    """
    cfg = OmegaConf.structured(GRPOConfig)
    if path is not None:
        path = Path(path)
        try:
            cfg = OmegaConf.merge(cfg, _read_yaml(path))
        except OmegaConfBaseException as e:
            raise ConfigError(f"{path}: {_describe(e)}") from e
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = OmegaConf.from_dotlist([f"v={raw}"]).v  # OmegaConf's own value grammar
            OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {item!r}: {_describe(e)}") from e
    try:
        obj: GRPOConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e)) from e
    obj.rollout.replay_sampling_mask = str(obj.rollout.replay_sampling_mask).lower()
    obj.train.compile = str(obj.train.compile).lower()
    obj.rollout.static_decode = str(obj.rollout.static_decode).lower()
    validate(obj)
    a = obj.algorithm
    # the resolved values go into config.yaml, so a run records the clip range it used
    a.eps_low, a.eps_high, a.loss_aggregation = loss_settings(a)
    return obj


def _read_yaml(path: Path) -> Any:
    """The file's settings as OmegaConf reads them, after checking that it exists, parses and
    holds a mapping of sections; errors name the file, and the line and column for YAML."""
    import yaml

    if not path.exists():
        resolved = str(path.resolve())
        where = "" if resolved == str(path) else f" (looked in {resolved})"
        raise ConfigError(f"config file {path} does not exist{where}")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory, not a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {path}: not UTF-8 text ({e.reason} at byte {e.start})"
        ) from e
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot be read ({e.strerror or e})") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = getattr(e, "context", None)
        raise ConfigError(
            f"config file {path}{where}: not valid YAML: {problem}"
            + (f" ({context})" if context else "")
        ) from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file {path}: the top level must be a mapping of sections (model:, data:, "
            f"train:, ...), got a {type(raw).__name__}"
        )
    # OmegaConf's own loader for the values (it reads 1e-6 as a float, where YAML 1.1 does not)
    return OmegaConf.load(path)


def _describe(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0]
    if key:
        return f"key '{key}': {msg}"
    return msg


def validate(cfg: GRPOConfig) -> None:
    """Checks that involve choices or several fields; each error names its key."""
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is None and key == "algorithm.loss_aggregation":
            continue  # the policy loss's default
        if value not in choices:
            raise ConfigError(f"key '{key}': {value!r} is not one of {', '.join(choices)}")
    a, t, r, o = cfg.algorithm, cfg.train, cfg.rollout, cfg.optim
    positive = {
        "algorithm.group_size": a.group_size,
        "algorithm.num_iterations": a.num_iterations,
        "train.steps": t.steps,
        "train.batch_size": t.batch_size,
        "train.micro_batch_size": t.micro_batch_size,
        "rollout.max_new_tokens": r.max_new_tokens,
        "rollout.max_batch_rows": r.max_batch_rows,
        "data.num_eval_prompts": cfg.data.num_eval_prompts,
        "launch.nnodes": cfg.launch.nnodes,
        "launch.nproc_per_node": cfg.launch.nproc_per_node,
        "log.log_every": cfg.log.log_every,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"key '{key}': must be at least 1, got {value}")
    non_negative = {
        "rollout.top_k": r.top_k,
        "train.eval_every": t.eval_every,
        "train.threads": t.threads,
        "rollout.max_model_len": r.max_model_len,
        "train.time_limit_minutes": t.time_limit_minutes,
        "train.epochs": t.epochs,
        "train.save_every": t.save_every,
        "log.samples_per_step": cfg.log.samples_per_step,
        "optim.weight_decay": o.weight_decay,
        "optim.max_grad_norm": o.max_grad_norm,
        "algorithm.advantage_eps": a.advantage_eps,
        "algorithm.dynamic_sampling_rounds": a.dynamic_sampling_rounds,
        "launch.node_rank": cfg.launch.node_rank,
        "launch.cpus_per_rank": cfg.launch.cpus_per_rank,
        "launch.gpus_per_node": cfg.launch.gpus_per_node,
        "launch.signal_before_s": cfg.launch.signal_before_s,
        "launch.stop_grace_s": cfg.launch.stop_grace_s,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"key '{key}': must be >= 0, got {value}")
    mbt = t.micro_batch_tokens
    if mbt != "auto" and (isinstance(mbt, bool) or not isinstance(mbt, int) or mbt < 0):
        raise ConfigError(
            f"key 'train.micro_batch_tokens': must be auto or a token count >= 0, got {mbt!r}"
        )
    # the critic is PPO's baseline, so one completion per prompt is enough there
    if a.group_size < (1 if a.advantage == "gae" else 2):
        raise ConfigError(
            "key 'algorithm.group_size': "
            + (
                f"must be >= 1, got {a.group_size}"
                if a.advantage == "gae"
                else "group-relative advantages need at least 2 completions per prompt to "
                f"compare them, got {a.group_size} (advantage=gae, PPO with a critic, takes 1)"
            )
        )
    if t.batch_size % a.group_size:
        raise ConfigError(
            f"key 'train.batch_size': {t.batch_size} is not a multiple of "
            f"algorithm.group_size={a.group_size} (the batch holds whole groups)"
        )
    if r.temperature <= 0:
        raise ConfigError(
            f"key 'rollout.temperature': must be > 0 for sampling a group, got {r.temperature}"
        )
    if not 0 < r.top_p <= 1:
        raise ConfigError(f"key 'rollout.top_p': must be in (0, 1], got {r.top_p}")
    eps_low, eps_high, _ = loss_settings(a)
    for key, value in {"algorithm.eps_low": eps_low, "algorithm.eps_high": eps_high}.items():
        if value < 0:
            raise ConfigError(f"key '{key}': must be >= 0, got {value}")
    if eps_low >= 1 and a.policy_loss != "cispo":
        # a clipped surrogate needs a lower bound > 0; CISPO's IS weight may have none
        raise ConfigError(
            f"key 'algorithm.eps_low': must be < 1 for policy_loss {a.policy_loss}, got {eps_low}"
        )
    if a.entropy_coef < 0:
        raise ConfigError(f"key 'algorithm.entropy_coef': must be >= 0, got {a.entropy_coef}")
    if a.dual_clip_c is not None and a.policy_loss != "ppo_clip":
        raise ConfigError(
            "key 'algorithm.dual_clip_c': the dual clip bounds PPO's token surrogate; "
            f"policy_loss {a.policy_loss} has none (leave dual_clip_c unset)"
        )
    for i, name in enumerate(cfg.log.trackers):
        if name not in ("tensorboard", "wandb"):
            raise ConfigError(f"key 'log.trackers[{i}]': {name!r} is not one of tensorboard, wandb")
    if len(set(cfg.log.trackers)) != len(cfg.log.trackers):
        raise ConfigError(f"key 'log.trackers': a tracker is listed twice: {cfg.log.trackers}")
    for key, value in {
        "algorithm.beta": a.beta,
        "algorithm.beta_start": a.beta_start,
        "algorithm.beta_end": a.beta_end,
    }.items():
        if value < 0:
            raise ConfigError(f"key '{key}': must be >= 0, got {value}")
    if o.lr <= 0:
        raise ConfigError(f"key 'optim.lr': must be > 0, got {o.lr}")
    _validate_lora(cfg.model)
    if not 0 <= o.warmup_ratio < 1:
        raise ConfigError(f"key 'optim.warmup_ratio': must be in [0, 1), got {o.warmup_ratio}")
    if not cfg.rewards:
        raise ConfigError("key 'rewards': at least one reward function is needed")
    for i, rw in enumerate(cfg.rewards):
        if not rw.name:
            raise ConfigError(f"key 'rewards[{i}].name': empty reward name")
        if rw.on_error not in ("raise", "skip"):
            raise ConfigError(f"key 'rewards[{i}].on_error': {rw.on_error!r} is not raise or skip")
        if rw.timeout_s is not None and rw.timeout_s <= 0:
            raise ConfigError(f"key 'rewards[{i}].timeout_s': must be > 0, got {rw.timeout_s}")
    if not 0 < r.vllm_memory_fraction <= 1:
        raise ConfigError(
            f"key 'rollout.vllm_memory_fraction': must be in (0, 1], got {r.vllm_memory_fraction}"
        )
    if a.tis_cap is not None and a.tis_cap <= 0:
        raise ConfigError(f"key 'algorithm.tis_cap': must be > 0, got {a.tis_cap}")
    if a.tis_cap is not None and r.engine == "transformers":
        raise ConfigError(
            "key 'algorithm.tis_cap': the transformers engine samples with the trainer's own "
            "weights and reports no sampling log-probs; use rollout.engine=vllm"
        )
    if a.dual_clip_c is not None and a.dual_clip_c <= 1:
        raise ConfigError(f"key 'algorithm.dual_clip_c': must be > 1, got {a.dual_clip_c}")
    if a.advantage == "process" and not a.step_reward:
        raise ConfigError(
            "key 'algorithm.step_reward': advantage 'process' needs a step reward function, e.g. "
            "grpo.rewards.step_rewards:arithmetic_step_rewards"
        )
    if a.kl_in_reward and not uses_reference_model(cfg):
        raise ConfigError("key 'algorithm.kl_in_reward': needs beta > 0 (a reference model)")
    _validate_gae(cfg)
    if t.keep_last < 1:
        raise ConfigError(f"key 'train.keep_last': must be at least 1, got {t.keep_last}")
    if t.resume not in ("", "auto", "never") and not Path(t.resume).is_dir():
        raise ConfigError(
            f"key 'train.resume': {t.resume!r} is not auto, never, or an existing checkpoint "
            "directory"
        )
    _validate_launch(cfg.launch)
    if cfg.data.task in ("file", "gsm8k") and not cfg.data.train_path:
        raise ConfigError(
            f"key 'data.train_path': required when data.task is '{cfg.data.task}'",
            hint="give the path of the prompts, e.g. data.train_path=prompts.jsonl",
        )
    if t.epochs > 0 and t.steps != TrainConfig().steps:
        raise ConfigError(
            "key 'train.steps': not read when train.epochs > 0 (the epochs set the steps), so it "
            "would be ignored",
            hint="remove train.steps, or set train.epochs=0",
        )
    _check_keys_of_other_modes(cfg)


def _validate_lora(m: ModelConfig) -> None:
    if m.lora_rank < 0:
        raise ConfigError(f"key 'model.lora_rank': must be >= 0 (0: no LoRA), got {m.lora_rank}")
    if m.lora_rank == 0:
        # the LoRA keys are read only with adapters: a setting without them would be ignored
        defaults = ModelConfig()
        changed = [
            key
            for key, value, default in (
                ("lora_alpha", m.lora_alpha, defaults.lora_alpha),
                ("lora_dropout", m.lora_dropout, defaults.lora_dropout),
                ("lora_target_modules", list(m.lora_target_modules), []),
            )
            if value != default
        ]
        if changed:
            raise ConfigError(
                f"key 'model.{changed[0]}': read only with LoRA, and model.lora_rank is 0",
                hint="set model.lora_rank (e.g. 16) to train adapters, or remove the key",
            )
        return
    if m.lora_alpha <= 0:
        raise ConfigError(f"key 'model.lora_alpha': must be > 0, got {m.lora_alpha}")
    if not 0 <= m.lora_dropout < 1:
        raise ConfigError(f"key 'model.lora_dropout': must be in [0, 1), got {m.lora_dropout}")
    for i, name in enumerate(m.lora_target_modules):
        if not name:
            raise ConfigError(f"key 'model.lora_target_modules[{i}]': empty module name")


# Keys read only in one mode of another key: (key, the mode key, the values it is read with).
# Setting one of them in another mode would be silently ignored, so it is an error instead
# (a value equal to the default is taken as not set: a written-out default config is fine).
_MODE_ONLY_KEYS: tuple[tuple[str, str, tuple[Any, ...]], ...] = (
    ("data.train_path", "data.task", ("file", "gsm8k")),
    ("data.eval_path", "data.task", ("file", "gsm8k")),
    ("data.split", "data.task", ("file",)),
    ("data.prompt_column", "data.task", ("file",)),
    ("data.system_prompt", "data.task", ("file", "gsm8k")),
    ("data.num_train_prompts", "data.task", ("arithmetic", "multistep")),
    ("algorithm.step_reward", "algorithm.advantage", ("process",)),
    ("algorithm.step_reward_kwargs", "algorithm.advantage", ("process",)),
    ("algorithm.scale_rewards", "algorithm.advantage", ("grpo",)),
    ("algorithm.gamma", "algorithm.advantage", ("gae",)),
    ("algorithm.gae_lambda", "algorithm.advantage", ("gae",)),
    ("critic.name_or_path", "algorithm.advantage", ("gae",)),
    ("critic.lr", "algorithm.advantage", ("gae",)),
    ("critic.warmup_steps", "algorithm.advantage", ("gae",)),
    ("critic.value_clip", "algorithm.advantage", ("gae",)),
    ("algorithm.beta", "algorithm.beta_schedule", ("constant",)),
    ("algorithm.beta_start", "algorithm.beta_schedule", ("cosine",)),
    ("algorithm.beta_end", "algorithm.beta_schedule", ("cosine",)),
    ("rollout.vllm_memory_fraction", "rollout.engine", ("auto", "vllm")),
    ("rollout.vllm_enforce_eager", "rollout.engine", ("auto", "vllm")),
    ("rollout.max_model_len", "rollout.engine", ("auto", "vllm")),
)


def _get(cfg: Any, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _check_keys_of_other_modes(cfg: GRPOConfig) -> None:
    defaults = GRPOConfig()
    for key, mode_key, modes in _MODE_ONLY_KEYS:
        value, mode = _get(cfg, key), _get(cfg, mode_key)
        if mode in modes or value == _get(defaults, key):
            continue
        wanted = " or ".join(repr(m) for m in modes)
        raise ConfigError(
            f"key '{key}': only read when {mode_key} is {wanted}, but {mode_key} is {mode!r}, "
            "so it would be ignored",
            hint=f"remove {key}, or set {mode_key}={modes[0]}",
        )


def _validate_gae(cfg: GRPOConfig) -> None:
    """Ranges of the PPO-with-critic keys (read only with advantage=gae, checked always)."""
    a, c = cfg.algorithm, cfg.critic
    for key, value in {"algorithm.gamma": a.gamma, "algorithm.gae_lambda": a.gae_lambda}.items():
        if not 0 <= value <= 1:
            raise ConfigError(f"key '{key}': must be in [0, 1], got {value}")
    if c.lr <= 0:
        raise ConfigError(f"key 'critic.lr': must be > 0, got {c.lr}")
    if c.warmup_steps < 0:
        raise ConfigError(f"key 'critic.warmup_steps': must be >= 0, got {c.warmup_steps}")
    if c.value_clip is not None and c.value_clip <= 0:
        raise ConfigError(
            f"key 'critic.value_clip': must be > 0 (or null to disable), got {c.value_clip}"
        )
    if a.advantage == "gae" and cfg.train.epochs == 0 and c.warmup_steps >= cfg.train.steps:
        raise ConfigError(
            f"key 'critic.warmup_steps': {c.warmup_steps} critic-only steps leave none of "
            f"train.steps={cfg.train.steps} for the policy",
            hint="use fewer warm-up steps, or more train.steps",
        )


def _validate_launch(lc: LaunchConfig) -> None:
    """Range checks only; what each backend needs on top is checked by ``grpo.launch``."""
    if lc.node_rank >= lc.nnodes:
        raise ConfigError(
            f"key 'launch.node_rank': {lc.node_rank} is not below launch.nnodes={lc.nnodes} "
            "(nodes are numbered 0 .. nnodes-1)"
        )
    if not 0 <= lc.master_port <= 65535:
        raise ConfigError(f"key 'launch.master_port': {lc.master_port} is not a port (0-65535)")
    for i, line in enumerate(lc.sbatch_lines):
        if not line.startswith("-"):
            raise ConfigError(
                f"key 'launch.sbatch_lines[{i}]': {line!r} is not an sbatch option; write it "
                "as it follows '#SBATCH ', e.g. '--qos=high'"
            )


def loss_settings(a: AlgorithmConfig) -> tuple[float, float, str]:
    """(eps_low, eps_high, loss_aggregation) with each unset one taken from the defaults the
    policy loss is documented with (``grpo.core.POLICY_LOSS_DEFAULTS``)."""
    from grpo.core import POLICY_LOSS_DEFAULTS

    d = POLICY_LOSS_DEFAULTS[a.policy_loss]
    return (
        d.eps_low if a.eps_low is None else a.eps_low,
        d.eps_high if a.eps_high is None else a.eps_high,
        d.aggregation if a.loss_aggregation is None else a.loss_aggregation,
    )


def replays_sampling_mask(cfg: GRPOConfig) -> bool:
    """Whether the trainer's log-probs are taken over the sampler's top-k/top-p kept set."""
    r = cfg.rollout
    mode = str(r.replay_sampling_mask).lower()
    if mode == "auto":
        return r.top_k > 0 or r.top_p < 1
    return mode == "true"


def sampling_mask(cfg: GRPOConfig) -> tuple[int, float]:
    """(top_k, top_p) for the trainer's log-prob passes: the sampler's, or (0, 1) when the
    mask is not replayed."""
    r = cfg.rollout
    return (r.top_k, r.top_p) if replays_sampling_mask(cfg) else (0, 1.0)


def uses_reference_model(cfg: GRPOConfig) -> bool:
    """Whether any step has beta > 0 (otherwise no reference model is loaded at all)."""
    a = cfg.algorithm
    if a.beta_schedule == "constant":
        return a.beta > 0
    return a.beta_start > 0 or a.beta_end > 0


def to_yaml(cfg: GRPOConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def field_docs() -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) for every field, in declaration order, for ``--help``."""
    rows: list[tuple[str, str, str, str]] = []
    for section in dataclasses.fields(GRPOConfig):
        if section.name == "rewards":
            default = ", ".join(f"{r.name}:{r.weight}" for r in _default_rewards())
            rows.append(("rewards", "list", f"[{default}]", section.metadata["doc"]))
            for f in dataclasses.fields(RewardConfig):
                rows.append(
                    (f"rewards[i].{f.name}", _type_name(f.type), _default(f), f.metadata["doc"])
                )
            continue
        for f in dataclasses.fields(section.default_factory()):  # type: ignore[misc]
            rows.append(
                (f"{section.name}.{f.name}", _type_name(f.type), _default(f), f.metadata["doc"])
            )
    return rows


def _type_name(t: Any) -> str:
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default) if isinstance(f.default, str) else str(f.default)
    return str(f.default_factory())  # type: ignore[misc]
