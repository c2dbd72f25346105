"""Stop rules: when a run has gone wrong, judged from its checkpoints (``ftlog collect --stop-when RULE``).

- ``nan``: a checkpoint's training loss or perplexity is not a finite number (NaN, infinite or missing);
- ``diverged[:RATIO[:K]]``: each of the last K checkpoints' training loss is above RATIO times the lowest loss
  of the checkpoints before them (defaults 1.5 and 3);
- ``plateau[:PCT[:K]]``: over the last K checkpoints the lowest training loss improved by less than PCT percent
  of the lowest before them (defaults 1 and 5).

A rule needs enough checkpoints to judge (``diverged`` and ``plateau`` K + 1 at least); until then it does not
trip. Evaluation is pure: the checkpoints in, a :class:`Trip` with the evidence (steps and values) or None out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

RULES = ("nan", "diverged", "plateau")
DEFAULTS: dict[str, tuple[float, int]] = {"diverged": (1.5, 3), "plateau": (1.0, 5)}
MAX_K = 10_000


class RuleError(ValueError):
    """A rule that does not parse; its message says what is wrong and what is allowed."""


@dataclass(frozen=True)
class Rule:
    name: str
    threshold: float = math.nan  # RATIO for diverged, PCT for plateau
    k: int = 0

    @property
    def text(self) -> str:
        """The rule as written in full, e.g. ``diverged:1.5:3``: how it is recorded."""
        return self.name if self.name == "nan" else f"{self.name}:{self.threshold:g}:{self.k}"


@dataclass(frozen=True)
class Trip:
    rule: Rule
    reason: str
    evidence: dict[str, Any]


def parse(text: str) -> Rule:
    """``nan``, ``diverged[:RATIO[:K]]`` or ``plateau[:PCT[:K]]``; RuleError for anything else."""
    name, *args = text.strip().split(":")
    if name not in RULES:
        raise RuleError(f"unknown stop rule {text!r}: use nan, diverged[:RATIO[:K]] or plateau[:PCT[:K]]")
    if name == "nan":
        if args:
            raise RuleError(f"the nan rule takes no arguments, not {text!r}")
        return Rule("nan")
    if len(args) > 2:
        raise RuleError(f"{name} takes at most two arguments ({name}:{'RATIO' if name == 'diverged' else 'PCT'}:K)")
    threshold, k = DEFAULTS[name]
    try:
        if args and args[0] != "":
            threshold = float(args[0])
        if len(args) > 1 and args[1] != "":
            k = int(args[1])
    except ValueError:
        raise RuleError(f"{text!r}: the arguments must be numbers, e.g. {name}:{DEFAULTS[name][0]:g}:"
                        f"{DEFAULTS[name][1]}") from None  # fmt: skip
    if not math.isfinite(threshold) or (name == "diverged" and threshold <= 1) or threshold < 0:
        least = "a finite number above 1" if name == "diverged" else "a finite percentage, 0 or more"
        raise RuleError(f"{text!r}: {'RATIO' if name == 'diverged' else 'PCT'} must be {least}")
    if not 1 <= k <= MAX_K:
        raise RuleError(f"{text!r}: K must be a whole number of checkpoints from 1 to {MAX_K:,}")
    return Rule(name, threshold, k)


def evaluate(
    rule: Rule, steps: Sequence[int], losses: Sequence[float | None], perplexities: Sequence[float | None]
) -> Trip | None:
    """Whether ``rule`` trips on a task's checkpoints (columns in step order), and why."""
    if rule.name == "nan":
        for step, loss, perplexity in zip(steps, losses, perplexities, strict=True):
            if not _finite(loss) or not _finite(perplexity):
                found: dict[str, Any] = {"step": step, "training_loss": _plain(loss), "perplexity": _plain(perplexity)}
                return Trip(rule, f"checkpoint {step} has training loss {loss} and perplexity {perplexity}", found)
        return None
    k = rule.k
    if len(steps) < k + 1:
        return None
    before = [v for v in losses[:-k] if v is not None and math.isfinite(v)]
    last = list(losses[-k:])
    if not before:
        return None
    best = min(before)
    evidence: dict[str, Any] = {
        "steps": list(steps[-k:]),
        "training_loss": [_plain(v) for v in last],
        "best_before": best,
        "best_step": steps[list(losses).index(best)],
    }
    if rule.name == "diverged":
        if all(_finite(v) and v > rule.threshold * best for v in last):  # type: ignore[operator]
            return Trip(rule, f"the last {k} losses are above {rule.threshold:g} x the best before ({best:g})",
                        evidence | {"ratio": rule.threshold})  # fmt: skip
        return None
    finite_last = [v for v in last if v is not None and math.isfinite(v)]
    if best <= 0 or not finite_last:
        return None
    now = min(best, *finite_last)
    improved = (best - now) / best * 100
    if improved < rule.threshold:
        return Trip(rule, f"the best loss improved {improved:.3g}% over the last {k} checkpoints "
                          f"(less than {rule.threshold:g}%)", evidence | {"improved_percent": improved})  # fmt: skip
    return None


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _plain(value: float | None) -> float | str | None:
    """A value as JSON can hold it: NaN and infinities as the text JavaScript and pandas read them from."""
    if value is None or math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
