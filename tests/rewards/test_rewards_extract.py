import pytest

from grpo.rewards.extract import completion_text, extract_answer, extract_number, parse_number

# (completion text, span extract_answer returns, number extract_number reads)
EXTRACTION_CASES = [
    # <answer> tags win over everything, and the last non-empty one counts.
    ("<answer> 18 dollars </answer>", "18 dollars", 18.0),
    ("<answer>3</answer> then <answer>4</answer>", "4", 4.0),
    ("<answer>5</answer> <answer>  </answer>", "5", 5.0),
    ("#### 9 <answer>7</answer> The answer is 8", "7", 7.0),
    ("<answer>She makes $18 a day</answer>", "She makes $18 a day", 18.0),
    ("<answer>\\boxed{42}</answer>", "\\boxed{42}", 42.0),
    ("<answer>x = -3</answer>", "x = -3", -3.0),
    # A stray unclosed <answer> does not swallow the well-formed one after it.
    ("<answer>draft <answer>12</answer>", "12", 12.0),
    # \boxed with balanced braces, last one wins, truncated ones are skipped.
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 0.5),
    ("first \\boxed{3}, then \\boxed{ 4 }", "4", 4.0),
    ("\\boxed{7} and a cut-off \\boxed{\\frac{1}{", "7", 7.0),
    ("\\boxed{18 \\text{ dollars}}", "18 \\text{ dollars}", 18.0),
    ("#### 99 but \\boxed{100}", "100", 100.0),
    # GSM8K's ####.
    ("so 9 * 2 = 18\n#### 72", "72", 72.0),
    ("#### 1,600", "1,600", 1600.0),
    ("#### -4", "-4", -4.0),
    # "The answer is" / "answer:", case-insensitive, the last one.
    ("The answer is $1,234.50.", "$1,234.50", 1234.5),
    ("the ANSWER IS 7 apples, not 9", "7", 7.0),
    ("Answer: -$5", "-$5", -5.0),
    ("**Final answer:** 0.25 then 3 more words 6", "0.25", 0.25),
    ("The answer is 3/4 of the cake", "3/4", 0.75),
    ("answer is 4 ... the answer is 6 and 7", "6", 6.0),
    # Last number fallback.
    ("She has 3 apples and 4.5 pears", "4.5", 4.5),
    ("It is -5 degrees", "-5", -5.0),
    ("it fell by \u22127", "\u22127", -7.0),
    ("16-3-4=<<16-3-4=9>>9 eggs", "9", 9.0),  # the "-3" and "-4" are not negative numbers
    ("costs $2,000 in total", "$2,000", 2000.0),
    ("about .5 of it", ".5", 0.5),
    ("no digits here at all", None, None),
    ("", None, None),
    ("<answer>B</answer>", "B", None),  # a span that is not a number
]


@pytest.mark.parametrize(("text", "span", "number"), EXTRACTION_CASES)
def test_extract_answer_and_number(text: str, span: str | None, number: float | None) -> None:
    assert extract_answer(text) == span
    assert extract_number(text) == number


PARSE_CASES = [
    ("42", 42.0),
    ("  -42 ", -42.0),
    ("+3", 3.0),
    ("1,234", 1234.0),
    ("1,234,567.5", 1234567.5),
    ("$1,234.50", 1234.5),
    ("-$5", -5.0),
    ("$-5", -5.0),
    ("€3.5", 3.5),
    ("£10", 10.0),
    ("18 dollars", 18.0),
    ("5 cm", 5.0),
    ("5 cm^2", 5.0),
    ("3 km/h.", 3.0),
    ("50%", 50.0),
    ("12.5 %", 12.5),
    ("3/4", 0.75),
    ("-3/4", -0.75),
    ("1 1/2", 1.5),
    ("\\frac{1}{2}", 0.5),
    ("-\\dfrac{3}{4}", -0.75),
    ("\\tfrac{10}{4}", 2.5),
    (".5", 0.5),
    ("7.", 7.0),
    ("1e3", 1000.0),
    ("1{,}234", 1234.0),
    ("**18**", 18.0),
    ("$18$", 18.0),
    ("x = 5", 5.0),
    ("90^\\circ", 90.0),
    ("\u22122", -2.0),
    # Not one number: refuse rather than guess.
    ("5 or 6", None),
    ("18 dollars and 50 cents", None),
    ("3 + 4", None),
    ("3/0", None),
    ("B", None),
    ("", None),
    ("   ", None),
    (None, None),
    ("1e999", None),
    ("twelve", None),
    ("(5)", None),
]


@pytest.mark.parametrize(("text", "value"), PARSE_CASES)
def test_parse_number(text: str | None, value: float | None) -> None:
    assert parse_number(text) == value


def test_completion_text_forms() -> None:
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"
    assert (
        completion_text([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
        == "a\nb"
    )
    assert completion_text({"role": "assistant", "content": "one"}) == "one"
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "x"}, {"type": "image"}]}]
    assert completion_text(parts) == "x"
    assert completion_text([{"role": "assistant", "content": None}]) == ""


def test_completion_text_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="completion_text: expected a string"):
        completion_text(42)
    with pytest.raises(TypeError, match="list of message dicts"):
        completion_text(["just a string in a list"])
