"""Promotion: a new model version takes `@champion` only when it measurably beats it.

Both models are scored by the same evaluation on the same store in the same retrain run, so
the comparison is like for like (a metric recorded months ago against other data is not).
The decision and its reason are written where people look: the version's tags
(`promotion_decision`, `promotion_reason`, `metric.<name>`) and a Prefect markdown artifact.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from storage import registry
from tasks.run_context import in_prefect_run

CHAMPION = registry.CHAMPION
CANDIDATE = registry.CANDIDATE
# metrics of tasks/evaluate.py where a larger value is the better model
HIGHER_IS_BETTER = ("accuracy", "inception_score")


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


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def decide(value: float | None, champion_version: int | None, champion_value: float | None,
           metric: str = "frechet_distance", lower_is_better: bool = True,
           margin: float = 0.0, champion_note: str | None = None,
           value_note: str | None = None) -> Decision:
    """Pure decision rule (no I/O), so every branch is easy to test.

    - no champion yet: the new version is champion;
    - the new version has no usable value: candidate (no evidence it is better);
    - the champion has no usable value on this store (e.g. its mel config no longer fits):
      the new version is champion, since it is the only one that can be measured;
    - otherwise champion only if better by more than `margin` (strictly), else candidate.
    """
    sense = "lower" if lower_is_better else "higher"
    if champion_version is None:
        return Decision(CHAMPION, "first model version: champion by default", value)
    if not _finite(value):
        why = value_note or f"{metric} is {value}"
        return Decision(CANDIDATE, f"new version could not be scored ({why}); "
                                   f"champion stays v{champion_version}", value, champion_value)
    assert value is not None
    if not _finite(champion_value):
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


def apply_decision(model_name: str, version: int, decision: Decision, metric: str,
                   champion_version: int | None) -> dict[str, Any]:
    """Set the alias and the tags in the registry; return a summary dict."""
    c = registry.client()
    v = str(version)
    if _finite(decision.value):
        c.set_model_version_tag(model_name, v, f"metric.{metric}", repr(float(decision.value)))
    if champion_version is not None and _finite(decision.champion_value):
        # the champion's score on today's store, so `models` shows the comparison made
        c.set_model_version_tag(model_name, str(champion_version), f"metric.{metric}",
                                repr(float(decision.champion_value)))
    registry.set_alias(model_name, decision.alias, v)
    if decision.alias == CHAMPION and champion_version is not None \
            and champion_version != version:
        c.set_model_version_tag(model_name, str(champion_version), "former_champion",
                                f"replaced by v{version}")
        cand = registry.version_by_alias(model_name, CANDIDATE)
        if cand is not None and str(cand.version) == v:
            c.delete_registered_model_alias(model_name, CANDIDATE)
    c.set_model_version_tag(model_name, v, "promotion_decision", decision.alias)
    c.set_model_version_tag(model_name, v, "promotion_reason", decision.reason)
    return {"model_name": model_name, "version": int(version), "decision": decision.alias,
            "reason": decision.reason, "metric": metric, **{
                k: val for k, val in asdict(decision).items() if k not in ("alias", "reason")},
            "previous_champion": champion_version}


def decision_markdown(result: dict[str, Any]) -> str:
    """The promotion as a short Prefect artifact."""

    def fmt(x: float | None) -> str:
        return f"{x:.4g}" if _finite(x) else "-"

    prev = result.get("previous_champion")
    return (
        f"### {result['model_name']} v{result['version']} -> `@{result['decision']}`\n\n"
        f"{result['reason']}\n\n"
        f"| | version | {result['metric']} |\n|---|---|---|\n"
        f"| new | v{result['version']} | {fmt(result.get('value'))} |\n"
        f"| champion before | {('v' + str(prev)) if prev is not None else '-'} | "
        f"{fmt(result.get('champion_value'))} |\n")


def promote(model_name: str, version: int, value: float | None,
            champion_version: int | None, champion_value: float | None,
            metric: str = "frechet_distance", lower_is_better: bool = True,
            margin: float = 0.0, champion_note: str | None = None,
            value_note: str | None = None) -> dict[str, Any]:
    """Decide, apply to the registry, and (inside Prefect) publish a markdown artifact."""
    decision = decide(value, champion_version, champion_value, metric, lower_is_better, margin,
                      champion_note, value_note)
    result = apply_decision(model_name, version, decision, metric, champion_version)
    if in_prefect_run():
        create_markdown_artifact(markdown=decision_markdown(result), key="promotion",
                                 description=f"{model_name} v{version}: {decision.alias}")
    return result


promote_task = task(promote, name="promote-model", cache_policy=NO_CACHE)
