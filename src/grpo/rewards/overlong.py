"""DAPO's soft overlong punishment: a length reward that ramps down near the generation cap.

DAPO (arXiv 2503.14476) section 3.4, eq. 13, with L_max = ``max_completion_length`` and
L_cache = ``buffer``::

    R_length(y) =  0                                  if |y| <= L_max - L_cache
                   ((L_max - L_cache) - |y|) / L_cache if L_max - L_cache < |y| <= L_max
                   -1                                 if |y| > L_max

multiplied here by ``penalty`` (DAPO uses 1). It is added to the task reward (give it weight 1
in the reward list), so a completion that runs into the last ``buffer`` tokens before the cap
loses up to ``penalty`` and one that reaches the cap loses all of it.

Length is counted in tokens, which a reward function does not see in the text. The trainer
passes ``completion_lengths`` (one int per completion: the number of generated tokens, the count
the cap applies to, EOS included when generated); when it is missing, ``len(completion_ids[i])``
is used (the ``completion_ids`` keyword TRL passes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["overlong_penalty", "soft_overlong_punishment"]


def overlong_penalty(length: int, max_completion_length: int, buffer: int) -> float:
    """DAPO eq. 13 for one completion of ``length`` tokens: 0, a linear ramp down to -1 over the
    last ``buffer`` tokens before ``max_completion_length``, and -1 beyond it."""
    expected = max_completion_length - buffer  # L_max - L_cache
    if length <= expected:
        return 0.0
    if length <= max_completion_length:
        return (expected - length) / buffer
    return -1.0


def soft_overlong_punishment(
    prompts: list[Any],
    completions: list[Any],
    completion_ids: Sequence[Sequence[int]] | None = None,
    *,
    max_completion_length: int,
    buffer: int,
    penalty: float = 1.0,
    completion_lengths: Sequence[int] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """``penalty * R_length(|y|)`` per completion (DAPO eq. 13, see the module docstring).

    Args:
        prompts, completions: the usual reward arguments (only their count is used).
        completion_ids: token ids per completion; used for the length when
            ``completion_lengths`` is not given.
        max_completion_length: L_max, the generation cap in tokens (set it in the reward's
            kwargs to the rollout's max_new_tokens).
        buffer: L_cache, the length of the ramp in tokens, 1 <= buffer <= max_completion_length
            (DAPO: 4096 of 20480).
        penalty: the scale of the punishment (the value at the cap is -penalty), >= 0.
        completion_lengths: tokens generated per completion, passed by the trainer.

    Returns:
        One float in [-penalty, 0] per completion.
    """
    if isinstance(max_completion_length, bool) or max_completion_length < 1:
        raise ValueError(
            f"soft_overlong_punishment: max_completion_length must be an integer >= 1, got "
            f"{max_completion_length!r}"
        )
    if isinstance(buffer, bool) or not 1 <= buffer <= max_completion_length:
        raise ValueError(
            f"soft_overlong_punishment: buffer must be an integer in [1, max_completion_length="
            f"{max_completion_length}], got {buffer!r}"
        )
    if not penalty >= 0:
        raise ValueError(f"soft_overlong_punishment: penalty must be >= 0, got {penalty!r}")
    if completion_lengths is not None:
        lengths = [int(n) for n in completion_lengths]
    elif completion_ids is not None:
        lengths = [len(ids) for ids in completion_ids]
    else:
        raise ValueError(
            "soft_overlong_punishment needs token lengths: the trainer passes "
            "completion_lengths (or completion_ids); pass one of them when calling it directly"
        )
    if len(lengths) != len(completions):
        raise ValueError(
            f"soft_overlong_punishment: {len(lengths)} lengths for {len(completions)} completions"
        )
    return [penalty * overlong_penalty(n, max_completion_length, buffer) for n in lengths]
