"""Prefect flows: wiring of the tasks in `tasks/` (see docs/architecture.md)."""

from flows.prefect_heartbeat import install_on_load as _install_heartbeat_patch

_install_heartbeat_patch()
