"""The `reward_model` reward: a learned reward model scores prompt + completion.

Any transformers sequence-classification model (`AutoModelForSequenceClassification`: a
directory or a hub id) with its own tokenizer and chat template. It is loaded once, when the
reward is built, and scores batches without gradients.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from grpo.rewards.extract import completion_text

__all__ = ["RewardModel"]

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class RewardModel:
    """Reward function `reward_model`: the model's score (a logit) for prompt + completion.

    Built from config as `{name: reward_model, kwargs: {path: ..., ...}}`.

    path: model directory or hub id (required).
    batch_size: sequences per forward pass.
    max_length: longest sequence in tokens; longer ones lose tokens from the start, so the
        end of the completion, where the score is read, is always seen.
    device: "cuda", "cpu", ...; default CUDA when available.
    dtype: "auto" (bf16 where the device supports it, else fp32), "bfloat16", "float16" or
        "float32".
    chat_template: format the conversation with the reward model's own chat template (the
        prompt as a user message, or the prompt's messages, then the completion as the
        assistant's); default: when the tokenizer has one. Without it, the text is prompt +
        completion.
    label: which output to use when the model has several (num_labels > 1); a model with one
        output needs none.
    trust_remote_code: passed to transformers.

    The score is the raw logit: scale it with the reward's weight. Sequences are sorted by
    length and padded on the right, so batching does not change a score.
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 8,
        max_length: int = 2048,
        device: str | None = None,
        dtype: str = "auto",
        chat_template: bool | None = None,
        label: int | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not isinstance(path, str) or not path:
            raise ValueError(f"reward_model: path must be a model directory or hub id: {path!r}")
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"reward_model: {name} must be a positive integer, got {value!r}")
        self.path = path
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = _pick_dtype(dtype, self.device)

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise ValueError(
                    f"reward_model: the tokenizer of {path!r} has neither a pad nor an eos "
                    "token; add a pad token to it"
                )
            tokenizer.pad_token = tokenizer.eos_token
        # Right padding keeps every real token at the position it has unpadded (left padding
        # would shift the positions and change scores); the end is what truncation keeps.
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "left"
        self.tokenizer = tokenizer
        if chat_template is None:
            chat_template = bool(getattr(tokenizer, "chat_template", None))
        elif chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"reward_model: chat_template is true but the tokenizer of {path!r} has none"
            )
        self.chat_template = bool(chat_template)

        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=self.dtype, trust_remote_code=trust_remote_code
        )
        # The model reads the score at the last token that is not padding; it must know which
        # token that is.
        model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model.to(self.device).eval()
        self.model.requires_grad_(False)
        num_labels = int(model.config.num_labels)
        if label is None:
            if num_labels != 1:
                raise ValueError(
                    f"reward_model: {path!r} has {num_labels} outputs; say which one is the "
                    "reward with kwargs.label (0-based)"
                )
            label = 0
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_labels:
            raise ValueError(
                f"reward_model: label must be an integer in [0, {num_labels}), got {label!r}"
            )
        self.label = label

    def __repr__(self) -> str:
        return f"RewardModel({self.path!r}, device={self.device}, dtype={self.dtype})"

    def text(self, prompt: Any, completion: Any) -> str:
        """The text the model scores for one prompt and completion."""
        if self.chat_template:
            messages = _messages(prompt, "user") + _messages(completion, "assistant")
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return completion_text(prompt) + completion_text(completion)

    @torch.inference_mode()
    def __call__(
        self, prompts: list[Any], completions: list[Any], **kwargs: Any
    ) -> list[float | None]:
        texts = [self.text(p, c) for p, c in zip(prompts, completions, strict=True)]
        # A chat template writes the special tokens itself (a second BOS would change scores).
        encoded = self.tokenizer(
            texts,
            add_special_tokens=not self.chat_template,
            truncation=True,
            max_length=self.max_length,
        )["input_ids"]
        # Longest first: each batch holds sequences of similar length, so little padding.
        order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
        scores: list[float | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = self.tokenizer.pad(
                {"input_ids": [encoded[i] for i in chunk]}, padding=True, return_tensors="pt"
            ).to(self.device)
            logits = self.model(**batch).logits  # [b, num_labels]
            for i, value in zip(chunk, logits[:, self.label].float().tolist(), strict=True):
                scores[i] = value
        return scores


def _messages(value: Any, role: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, Mapping):
        return [dict(value)]
    if isinstance(value, list | tuple):
        return [dict(m) for m in value]
    raise TypeError(f"reward_model: expected a string or chat messages, got {type(value).__name__}")


def _pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    if dtype != "auto":
        raise ValueError(
            f"reward_model: dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}"
        )
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        try:
            # AVX512-BF16 / AMX CPUs run bf16 matmuls several times faster than fp32.
            return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
        except (AttributeError, RuntimeError):
            return torch.float32
    return torch.float32
