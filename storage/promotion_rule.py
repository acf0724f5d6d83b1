"""The one promotion rule: does a new model version take `@champion` or `@candidate`?

Pure (no I/O, no MLflow), so every branch is easy to test; `storage.registry.promote` is
the one function that applies it (aliases and tags) for every flow that registers a
version: the train flow (no evaluation: first version champion, later ones candidates)
and the retrain flow (both models scored by the same evaluation on the same store).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CHAMPION = "champion"
CANDIDATE = "candidate"
# metrics of tasks/evaluate.py where a larger value is the better model
HIGHER_IS_BETTER = ("accuracy", "inception_score")
NO_METRIC = "no evaluation metric"


def lower_is_better_for(metric: str) -> bool:
    """Direction of an evaluation metric: Fréchet distance, NDB: lower; accuracy, IS: higher."""
    return not any(metric == m or metric.endswith(f"_{m}") or metric.startswith(f"{m}/")
                   or f"_{m}/" in metric for m in HIGHER_IS_BETTER)


@dataclass(frozen=True)
class Decision:
    """Which alias the new version gets, and why (one sentence)."""

    alias: str
    reason: str
    value: float | None = None
    champion_value: float | None = None


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def decide(value: float | None, champion_version: int | None, champion_value: float | None,
           metric: str = "frechet_distance", lower_is_better: bool = True,
           margin: float = 0.0, champion_note: str | None = None,
           value_note: str | None = None, version: int | None = None) -> Decision:
    """The rule:

    - no champion yet: the new version is champion;
    - the new version is the champion already: it stays;
    - the new version has no usable value (none measured, or not finite): candidate, since
      there is no evidence it is better;
    - the champion has no usable value (e.g. its mel config no longer fits the store): the
      new version is champion, since it is the only one that can be measured;
    - otherwise champion only if better by more than `margin` (strictly), else candidate.
    """
    sense = "lower" if lower_is_better else "higher"
    if champion_version is None:
        return Decision(CHAMPION, "first model version: champion by default", value)
    if version is not None and int(version) == int(champion_version):
        return Decision(CHAMPION, f"v{version} is already the champion", value, champion_value)
    if not finite(value):
        why = value_note or f"{metric} is {value}"
        return Decision(CANDIDATE, f"new version could not be scored ({why}); "
                                   f"champion stays v{champion_version}", value, champion_value)
    assert value is not None
    if not finite(champion_value):
        why = champion_note or f"its {metric} is {champion_value}"
        return Decision(CHAMPION, f"champion v{champion_version} could not be scored on this "
                                  f"store ({why}); new version measured {metric}={value:.4g}",
                        value, champion_value)
    assert champion_value is not None
    if lower_is_better:
        better = value < champion_value - margin
    else:
        better = value > champion_value + margin
    verdict = "beats" if better else "does not beat"
    reason = (f"{metric}={value:.4g} {verdict} champion v{champion_version} "
              f"({champion_value:.4g}) by more than margin {margin:g} ({sense} is better)")
    return Decision(CHAMPION if better else CANDIDATE, reason, value, champion_value)
