"""KL-coefficient and learning-rate schedules against hand values."""

import pytest

from grpo.core import beta_at, lr_lambda_warmup_cosine

START, END = 0.1, 0.01


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.1),  # 0%: hold beta_start
        (5, 0.1),
        (10, 0.1),  # 10%: cosine progress 0 -> beta_start
        (45, 0.055),  # 45%: progress (0.45 - 0.1) / 0.7 = 0.5 -> (0.1 + 0.01) / 2
        (80, 0.01),  # 80%: progress 1 -> beta_end
        (90, 0.01),
        (100, 0.01),  # 100%
    ],
)
def test_cosine_beta(step: int, expected: float) -> None:
    got = beta_at(step, 100, schedule="cosine", beta=0.5, beta_start=START, beta_end=END)
    assert got == pytest.approx(expected, abs=1e-12)


def test_cosine_beta_quarter_point() -> None:
    # step 55 of 200: f = 0.275, progress 0.175 / 0.7 = 0.25, cos(pi / 4) = 0.707107,
    # 0.01 + 0.09 * (1 + 0.707107) / 2 = 0.01 + 0.09 * 0.853553 = 0.086820.
    got = beta_at(55, 200, schedule="cosine", beta=0.5, beta_start=START, beta_end=END)
    assert got == pytest.approx(0.086820, abs=1e-6)


def test_constant_beta_and_errors() -> None:
    assert beta_at(7, 100, schedule="constant", beta=0.04, beta_start=1, beta_end=2) == 0.04
    with pytest.raises(ValueError, match="constant, cosine"):
        beta_at(0, 10, schedule="linear", beta=0, beta_start=0, beta_end=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="total_steps"):
        beta_at(0, 0, schedule="cosine", beta=0, beta_start=0, beta_end=0)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.1),  # warmup (0 + 1) / 10
        (4, 0.5),  # (4 + 1) / 10
        (9, 1.0),  # last warmup step reaches 1
        (10, 1.0),  # cosine progress 0
        (35, 0.868198),  # progress 25/100 = 0.25: 0.1 + 0.9 * 0.853553
        (60, 0.55),  # progress 0.5: 0.1 + 0.9 * 0.5
        (110, 0.1),  # end: min_ratio
        (200, 0.1),  # past the end: held at min_ratio
    ],
)
def test_lr_warmup_cosine(step: int, expected: float) -> None:
    got = lr_lambda_warmup_cosine(step, warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert got == pytest.approx(expected, abs=1e-6)


def test_lr_no_warmup_and_errors() -> None:
    assert lr_lambda_warmup_cosine(0, 0, 10) == 1.0
    assert lr_lambda_warmup_cosine(10, 0, 10) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_lambda_warmup_cosine(0, 20, 10)
