"""Prompt datasets, chat templates and the built-in tasks."""

from grpo.data.chat import ChatTemplateError, render_prompt
from grpo.data.errors import DatasetError
from grpo.data.gsm8k import DEFAULT_SYSTEM_PROMPT, load_gsm8k
from grpo.data.prompts import load_prompt_rows

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "ChatTemplateError",
    "DatasetError",
    "load_gsm8k",
    "load_prompt_rows",
    "render_prompt",
]
