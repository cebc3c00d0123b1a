"""Arithmetic step rewards and the char -> token offset bridge, by hand."""

import pytest
import torch

from grpo.core import process_advantages
from grpo.rewards.step_rewards import (
    arithmetic_step_rewards,
    char_to_token_ends,
    correct_steps,
    steps_to_token_ends,
    token_char_spans,
)

PROMPT = "Q: 23+45-17+8\n"
GOOD = "<think>23+45=68 68-17=51 51+8=59</think><answer>59</answer>"


def test_correct_chain_with_char_offsets() -> None:
    # "<think>" is 7 characters: "23+45=68" spans 7..15, "68-17=51" 16..24, "51+8=59" 25..32.
    (steps,) = arithmetic_step_rewards([PROMPT], [GOOD])
    assert steps == [(1.0, 15), (1.0, 24), (1.0, 32)]
    assert GOOD[:15].endswith("=68") and GOOD[:24].endswith("=51") and GOOD[:32].endswith("=59")


def test_slip_then_locally_correct_steps() -> None:
    # Step 1 is wrong (68 written as 69); steps 2 and 3 are right given what was written.
    slip = "<think>23+45=69 69-17=52 52+8=60</think><answer>60</answer>"
    (zero,) = arithmetic_step_rewards([PROMPT], [slip])
    assert [r for r, _ in zero] == [0.0, 1.0, 1.0]
    (neg,) = arithmetic_step_rewards([PROMPT], [slip], incorrect_reward=-1.0)
    assert [r for r, _ in neg] == [-1.0, 1.0, 1.0]


def test_correct_steps_is_the_share_of_the_problems_steps_done_right() -> None:
    # PROMPT has three steps. A slip in the first step still leaves two locally right steps;
    # repeating a step earns it once; steps beyond the problem's three earn nothing more.
    completions = [
        GOOD,
        "<think>23+45=69 69-17=52 52+8=60</think><answer>60</answer>",
        "<think>23+45=68 23+45=68 68-17=51</think>",
        "<think>23+45=68 68-17=51 51+8=59 59+1=60 60+1=61</think>",
        "<think>23+45=68</think><answer>68</answer>",
        "<answer>59</answer>",
    ]
    got = correct_steps([PROMPT] * len(completions), completions)
    assert got == pytest.approx([1.0, 2 / 3, 1 / 3, 1.0, 1 / 3, 0.0])
    # not a problem of the arithmetic tasks: nothing to count the steps against
    assert correct_steps(["What is 2+2?"], ["<think>2+2=4</think>"]) == [0.0]


def test_steps_must_follow_the_problem() -> None:
    # Repeating the first step and skipping ahead earns nothing after the first.
    padded = "<think>23+45=68 23+45=68 68-17=51</think>"
    (steps,) = arithmetic_step_rewards([PROMPT], [padded])
    assert [r for r, _ in steps] == [1.0, 0.0, 0.0]
    # Extra steps past the last term, and wrong operands, are wrong.
    extra = "<think>23+45=68 68-17=51 51+8=59 59+1=60</think>"
    (steps,) = arithmetic_step_rewards([PROMPT], [extra])
    assert [r for r, _ in steps] == [1.0, 1.0, 1.0, 0.0]
    # follow_problem=False (or a prompt of another task): arithmetic alone.
    (loose,) = arithmetic_step_rewards([PROMPT], [padded], follow_problem=False)
    assert [r for r, _ in loose] == [1.0, 1.0, 1.0]
    (other,) = arithmetic_step_rewards(["What is 2+2?"], ["<think>2+2=4 1+1=3</think>"])
    assert [r for r, _ in other] == [1.0, 0.0]


def test_think_region_edge_cases() -> None:
    # no think block: nothing to score (the answer is not a step)
    assert arithmetic_step_rewards([PROMPT], ["<answer>59</answer>"]) == [[]]
    # <think> opened by the chat template: the completion starts inside it
    (steps,) = arithmetic_step_rewards([PROMPT], ["23+45=68</think><answer>68</answer>"])
    assert steps == [(1.0, 8)]
    # truncated inside the think block: the last, possibly cut, step is dropped
    (steps,) = arithmetic_step_rewards([PROMPT], ["<think>23+45=68 68-17=5"])
    assert steps == [(1.0, 15)]
    # steps after </think> do not count; chat-message completions work
    chat = [{"role": "assistant", "content": "<think>23+45=68</think> 68-17=51"}]
    assert arithmetic_step_rewards([PROMPT], [chat]) == [[(1.0, 15)]]


class PieceTokenizer:
    """Each id decodes to a fixed piece; id 99 is a special token (EOS)."""

    pieces = {0: "<think>", 1: "23", 2: "+", 3: "45", 4: "=", 5: "68", 6: " 68", 7: "-",
              8: "17", 9: "51", 10: "</think>", 99: "<eos>"}  # fmt: skip

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(self.pieces[i] for i in token_ids if not (skip_special_tokens and i == 99))


class ByteTokenizer:
    """Each id decodes to raw bytes; one character may be split over two tokens."""

    pieces = {0: b"a", 1: b"\xc3", 2: b"\xa9", 3: b"b"}  # "\xc3\xa9" is "é"

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return b"".join(self.pieces[i] for i in token_ids).decode("utf-8", errors="replace")


def test_token_spans_and_token_ends() -> None:
    ids = [0, 1, 2, 3, 4, 5, 6, 7, 8, 4, 9, 10, 99]
    spans = token_char_spans(ids, PieceTokenizer())
    assert spans == [(0, 7), (7, 9), (9, 10), (10, 12), (12, 13), (13, 15), (15, 18),
                     (18, 19), (19, 21), (21, 22), (22, 24), (24, 32), (32, 32)]  # fmt: skip
    # "<think>23+45=68 68-17=51</think>": steps end at characters 15 and 24.
    # Tokens starting before 15: ids[0..5] -> 6; before 24: ids[0..10] -> 11. The skipped EOS
    # belongs to no step.
    assert char_to_token_ends([15, 24, 0], spans) == [6, 11, 0]


def test_split_character_goes_with_the_token_that_completes_it() -> None:
    spans = token_char_spans([0, 1, 2, 3], ByteTokenizer())  # "a", half of "é", rest, "b"
    assert spans == [(0, 1), (1, 1), (1, 2), (2, 3)]
    # a step ending after "é" (char end 2) takes both halves: 3 tokens; after "a": 1 token
    assert char_to_token_ends([2, 1, 3], spans) == [3, 1, 4]


def test_end_to_end_into_process_advantages() -> None:
    tok = PieceTokenizer()
    good = [0, 1, 2, 3, 4, 5, 6, 7, 8, 4, 9, 10, 99]  # both steps right
    bad = [0, 1, 2, 3, 4, 9, 10, 99]  # "<think>23+45=51</think>": one wrong step
    texts = [tok.decode(good, True), tok.decode(bad, True)]
    steps = arithmetic_step_rewards(["Q: 23+45-17\n"] * 2, texts)
    assert steps == [[(1.0, 15), (1.0, 24)], [(0.0, 15)]]
    rewards, ends = steps_to_token_ends(steps, [good, bad], tok)
    assert rewards == [[1.0, 1.0], [0.0]] and ends == [[6, 11], [6]]
    out = process_advantages(rewards, ends, 2, [len(good), len(bad)])
    adv = out.advantages
    assert adv.shape == (2, 13)
    # steps {1, 1, 0}: mean 2/3, sample std sqrt(1/3); normalised 0.57735 / -1.15470 (eps 1e-4)
    a, b = (1 / 3) / (3**-0.5 + 1e-4), (-2 / 3) / (3**-0.5 + 1e-4)
    assert adv[0, 0].item() == pytest.approx(2 * a, abs=1e-5)  # both steps still ahead
    assert adv[0, 6].item() == pytest.approx(a, abs=1e-5)  # only the second step
    assert torch.equal(adv[0, 11:], torch.zeros(2))  # "</think>" and EOS: no step after them
    assert adv[1, :6].tolist() == pytest.approx([b] * 6, abs=1e-5)
    assert torch.equal(adv[1, 6:], torch.zeros(7))
