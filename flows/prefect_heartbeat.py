"""Stop Prefect's sync flow engine from waiting up to a second for its heartbeat thread.

Prefect 3.9 runs a daemon heartbeat thread per flow run that sleeps in whole seconds and,
in the sync engine, is joined when the run ends: every sync flow run finishes up to 1 s
late (an empty flow: 1.08 s instead of 0.10 s here; a no-op precompute re-run was 90%
this wait). Prefect's own async engine passes `join_on_exit=False` and lets the thread
see its stop flag and exit by itself; `install()` makes the sync engine do the same.
Heartbeats are still sent while a run lives, and never after its stop flag is set, so
zombie detection (scripts/zombie_automation.py) is unaffected.

The patch is applied only where the private hook exists with that parameter; on any
other Prefect version it does nothing and runs keep the original behaviour.

`install_on_load()` (run by `import flows`) applies it the moment Prefect's flow engine is
loaded, which is before any flow can run, rather than importing Prefect itself: the CLI's
quick commands import `flows.defaults` and must not pay for Prefect (~2 s).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

_MARK = "_audio_wgan_no_join"
ENGINE = "prefect.flow_engine"


def install_on_load() -> None:
    """Patch now when the flow engine is loaded, else right after it loads."""
    if ENGINE in sys.modules:
        install()
    elif not any(isinstance(f, _PatchOnLoad) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnLoad())


class _PatchOnLoad(importlib.abc.MetaPathFinder):
    """Finds `prefect.flow_engine` as the other finders do, and installs the patch once
    the module has run."""

    def find_spec(self, name: str, path: Any = None, target: Any = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if name != ENGINE:
            return None
        sys.meta_path.remove(self)  # once: the real finders answer from here on
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            install(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install(flow_engine: ModuleType | None = None) -> bool:
    """Patch once; True when the sync engine now skips the join."""
    if flow_engine is None:
        from prefect import flow_engine

    orig: Callable[..., Any] | None = getattr(flow_engine, "_send_heartbeats", None)
    if orig is None or getattr(orig, _MARK, False):
        return bool(orig is not None)
    try:
        params = inspect.signature(orig).parameters
    except (TypeError, ValueError):
        return False
    if "join_on_exit" not in params:
        return False

    @functools.wraps(orig)
    def send_heartbeats_no_join(engine: Any, join_on_exit: bool = True) -> Any:
        return orig(engine, join_on_exit=False)

    setattr(send_heartbeats_no_join, _MARK, True)
    flow_engine._send_heartbeats = send_heartbeats_no_join
    return True


def installed() -> bool:
    from prefect import flow_engine

    return bool(getattr(getattr(flow_engine, "_send_heartbeats", None), _MARK, False))
