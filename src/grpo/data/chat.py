"""Turn a dataset prompt into the text the model is given."""

from __future__ import annotations

from typing import Any

from grpo.data.prompts import prompt_problem
from grpo.errors import ChatTemplateError

__all__ = ["ChatTemplateError", "render_prompt"]


def render_prompt(
    prompt: str | list[dict[str, Any]], tokenizer: Any, *, system_prompt: str | None = None
) -> str:
    """Return the model input text for one prompt.

    - A plain string is returned as is: the dataset chose raw text, so no template and no
      system prompt are applied.
    - A list of chat messages goes through
      `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`,
      with `{"role": "system", "content": system_prompt}` put first when `system_prompt` is
      given and the list has no system message of its own.

    `tokenizer` is anything with `apply_chat_template` and `chat_template` (a transformers
    tokenizer). Raises `ChatTemplateError` when the prompt is a message list and the tokenizer
    has no chat template, or when the template fails on these messages.
    """
    if isinstance(prompt, str):
        return prompt
    problem = prompt_problem(prompt)
    if problem is not None:
        raise ChatTemplateError(f"render_prompt: the prompt {problem}")
    messages = [dict(message) for message in prompt]  # copies: the dataset row stays untouched
    if system_prompt is not None and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})

    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ChatTemplateError(
            f"render_prompt: the prompt is a list of chat messages but tokenizer {name!r} has no "
            "chat template",
            hint="use a chat (instruct) model's tokenizer, set tokenizer.chat_template to a Jinja "
            "template, or give prompts as plain strings",
        )
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:
        raise ChatTemplateError(
            f"render_prompt: the chat template failed on a prompt with roles "
            f"{[m['role'] for m in messages]}: {type(exc).__name__}: "
            f"{(str(exc).strip().splitlines() or [''])[0]}"
        ) from exc
    if not isinstance(text, str):
        raise ChatTemplateError(
            "render_prompt: apply_chat_template(..., tokenize=False) returned a "
            f"{type(text).__name__}, expected a string"
        )
    return text
