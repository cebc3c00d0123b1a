import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from grpo.data.chat import ChatTemplateError, render_prompt

# A tiny template with visible role markers, so the expected strings can be written by hand.
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
STRICT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}" + TEMPLATE
)


def make_tokenizer(chat_template: str | None = TEMPLATE) -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "</s>": 1, "hi": 2, "be": 3, "brief": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>"
    )
    tokenizer.chat_template = chat_template
    return tokenizer


USER = [{"role": "user", "content": "hi"}]


def test_plain_string_is_used_as_is() -> None:
    tokenizer = make_tokenizer()
    assert render_prompt("Question: 1+1?\nAnswer:", tokenizer) == "Question: 1+1?\nAnswer:"
    # No template and no system prompt for raw text, even when one is configured.
    assert render_prompt("raw", tokenizer, system_prompt="S") == "raw"
    assert render_prompt("raw", make_tokenizer(None)) == "raw"


def test_messages_go_through_the_chat_template() -> None:
    tokenizer = make_tokenizer()
    assert render_prompt(USER, tokenizer) == "<|user|>hi\n<|assistant|>"


def test_system_prompt_is_prepended_only_when_missing() -> None:
    tokenizer = make_tokenizer()
    assert render_prompt(USER, tokenizer, system_prompt="be brief") == (
        "<|system|>be brief\n<|user|>hi\n<|assistant|>"
    )
    own = [{"role": "system", "content": "mine"}, *USER]
    assert render_prompt(own, tokenizer, system_prompt="be brief") == (
        "<|system|>mine\n<|user|>hi\n<|assistant|>"
    )
    assert USER == [{"role": "user", "content": "hi"}]  # the row is not modified


def test_tokenizer_without_chat_template() -> None:
    with pytest.raises(ChatTemplateError) as err:
        render_prompt(USER, make_tokenizer(None))
    message = str(err.value)
    assert "list of chat messages" in message and "has no chat template" in message
    assert "plain strings" in message


def test_template_failure_is_reported() -> None:
    tokenizer = make_tokenizer(STRICT_TEMPLATE)
    assert render_prompt(USER, tokenizer) == "<|user|>hi\n<|assistant|>"
    with pytest.raises(ChatTemplateError) as err:
        render_prompt(USER, tokenizer, system_prompt="be brief")
    assert "['system', 'user']" in str(err.value)
    assert "System role not supported" in str(err.value)


def test_invalid_messages() -> None:
    with pytest.raises(ChatTemplateError, match="the prompt is an empty list of messages"):
        render_prompt([], make_tokenizer())
    with pytest.raises(ChatTemplateError, match="message 0 has no 'role'"):
        render_prompt([{"content": "hi"}], make_tokenizer())
