"""Prefect task of the retrain flow: promote a new version by the one promotion rule.

The rule is `storage.promotion_rule.decide` and `storage.registry.promote` applies it (the
train flow's registration uses the same function). Both models are scored by the same
evaluation on the same store in the same retrain run, so the comparison is like for like
(a metric recorded months ago against other data is not). Besides the version's tags, the
decision and its reason become a Prefect markdown artifact.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from report.run_context import in_prefect_run
from storage import registry
from storage.promotion_rule import CANDIDATE, CHAMPION, finite, lower_is_better_for

__all__ = ["CANDIDATE", "CHAMPION", "decision_markdown", "lower_is_better_for", "promote",
           "promote_task"]


def decision_markdown(result: dict[str, Any]) -> str:
    """The promotion as a short Prefect artifact."""

    def fmt(x: float | None) -> str:
        return f"{x:.4g}" if finite(x) else "-"

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
    """`registry.promote` with both scores of this run, plus (inside Prefect) an artifact.

    `champion_value` is what `champion_version` scored; `None` with `champion_note` when it
    could not be scored on this store."""
    result = registry.promote(model_name, version, metric, value, lower_is_better, margin,
                              champion_value=champion_value,
                              champion_version=champion_version,
                              champion_note=(champion_note or "not scored by this run")
                              if champion_value is None and champion_version is not None
                              else None,
                              value_note=value_note)
    if in_prefect_run():
        create_markdown_artifact(markdown=decision_markdown(result), key="promotion",
                                 description=f"{model_name} v{version}: {result['decision']}")
    return result


promote_task = task(promote, name="promote-model", cache_policy=NO_CACHE)
