"""Stop rules, parsed and evaluated on checkpoint columns."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftlog.rules import Rule, RuleError, evaluate, parse


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("nan", Rule("nan")),
        ("diverged", Rule("diverged", 1.5, 3)),
        ("diverged:2", Rule("diverged", 2.0, 3)),
        ("diverged:2:4", Rule("diverged", 2.0, 4)),
        ("diverged::4", Rule("diverged", 1.5, 4)),
        ("plateau", Rule("plateau", 1.0, 5)),
        ("plateau:0.5:10", Rule("plateau", 0.5, 10)),
        (" plateau:0:1 ", Rule("plateau", 0.0, 1)),
    ],
)
def test_rules_parse_with_documented_defaults(text: str, rule: Rule) -> None:
    assert parse(text) == rule
    assert parse(rule.text) == rule, "the recorded form parses back to the same rule"


@pytest.mark.parametrize(
    "text",
    ["", "nope", "nan:1", "diverged:x", "diverged:nan", "diverged:inf", "diverged:1", "diverged:0.5", "diverged:2:0",
     "diverged:2:-1", "diverged:2:1.5", "plateau:-1", "plateau:1:0", "plateau:1:2:3", "plateau:1:100000"],
)  # fmt: skip
def test_bad_rules_are_refused_with_the_reason(text: str) -> None:
    with pytest.raises(RuleError) as raised:
        parse(text)
    assert "\n" not in str(raised.value) and str(raised.value)


def test_nan_trips_on_the_first_value_that_is_not_finite() -> None:
    rule = parse("nan")
    assert evaluate(rule, [1, 2], [1.0, 0.9], [2.7, 2.5]) is None
    trip = evaluate(rule, [1, 2, 3], [1.0, math.nan, 0.8], [2.7, 2.5, math.inf])
    assert trip is not None and trip.evidence == {"step": 2, "training_loss": "NaN", "perplexity": 2.5}
    trip = evaluate(rule, [5], [0.5], [None])
    assert trip is not None and trip.evidence["step"] == 5, "a missing perplexity is not finite either"


def test_diverged_needs_every_one_of_the_last_k_above_the_ratio() -> None:
    rule = parse("diverged:1.5:3")
    steps = [10, 20, 30, 40, 50]
    assert evaluate(rule, steps, [2.0, 1.0, 1.6, 1.7, 1.8], [None] * 5) is not None
    assert evaluate(rule, steps, [2.0, 1.0, 1.6, 1.4, 1.8], [None] * 5) is None, "one of the last 3 is not above"
    assert evaluate(rule, steps, [2.0, 1.0, 1.6, math.nan, 1.8], [None] * 5) is None, "NaN is the nan rule's"
    assert evaluate(rule, [10, 20, 30], [1.0, 2.0, 3.0], [None] * 3) is None, "three checkpoints cannot judge three"
    trip = evaluate(rule, steps, [2.0, 1.0, 1.6, 1.7, 1.8], [None] * 5)
    assert trip is not None and trip.evidence["steps"] == [30, 40, 50] and trip.evidence["best_step"] == 20


def test_plateau_measures_the_improvement_of_the_best_loss() -> None:
    rule = parse("plateau:1:3")
    steps = [1, 2, 3, 4, 5]
    assert evaluate(rule, steps, [2.0, 1.0, 0.999, 1.0, 1.2], [None] * 5) is not None  # 0.1 %
    assert evaluate(rule, steps, [2.0, 1.0, 0.98, 1.0, 1.2], [None] * 5) is None  # 2 %
    assert evaluate(rule, [1], [1.0], [2.7]) is None, "one checkpoint cannot judge"


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.none(), min_size=0, max_size=30),
       st.sampled_from(["nan", "diverged", "diverged:3:1", "plateau", "plateau:0:2"]))  # fmt: skip
def test_rules_never_fail_on_any_values(values: list[float | None], text: str) -> None:
    steps = list(range(1, len(values) + 1))
    trip = evaluate(parse(text), steps, values, values)
    assert trip is None or trip.rule.text == parse(text).text
