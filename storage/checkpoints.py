"""Training checkpoints on disk: atomic, hash-verified, pickle-free to load.

Layout of a checkpoint directory:

    epoch_00010.pt            torch.save of the trainer state plus {"meta": ...}
    epoch_00010.pt.sha256     "<hex>  epoch_00010.pt" (the format `sha256sum -c` reads)
    wgan_audio.pth.tar        symlink to the newest checkpoint (the seed's file name)

A checkpoint is written to a hidden temporary file in the same directory, flushed and
fsynced, then renamed into place, so a crash (even SIGKILL or power loss) leaves either
the old set or the new file, never a torn one; the hash sidecar follows the same way, and
a checkpoint without a matching sidecar is treated as damaged. Loading verifies the hash
and uses `torch.load(weights_only=True)`, so a checkpoint cannot run code. When the newest
checkpoint is damaged a warning is logged and the one before it is used. A checkpoint
that verifies but lacks what a trainer needs (weights, counters: `check_contents`) counts
as damaged too: a hash only vouches for the bytes, not for who wrote them.

The `meta` of a training checkpoint also holds what a model bundle needs (`EXPORT_META`:
class names, mel configuration, preset, normalisation statistics), so
`export_bundle_from_checkpoint` makes a bundle from the checkpoint file alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from storage.atomic_files import TMP_PREFIX, atomic_write, fsync_dir, remove_temps
from storage.store_lock import FolderLock

log = logging.getLogger("audio_wgan")

LATEST_NAME = "wgan_audio.pth.tar"
_NAME_RE = re.compile(r"^epoch_(\d{5,})\.pt$")
_CHUNK = 1 << 20


# what every trainer checkpoint holds, whether it is resumed or warm-started from
WEIGHT_GROUPS = ("generator", "critic", "ema_generator")
COUNTERS = ("epoch", "step")
# meta keys a bundle is exported from: class names, MelConfig.to_dict(), preset name, and
# the store's per-mel-band mean and std (lists of floats) the generator was trained against
EXPORT_META = ("classes", "mel", "preset", "norm_mean", "norm_std")


class CheckpointError(RuntimeError):
    """A checkpoint problem the user must act on; the message is one line."""


TRAIN_LOCK_FILE = ".train.lock"


def checkpoint_folder_lock(ckpt_dir: str | Path) -> FolderLock:
    """The lock a training run holds on its checkpoint folder for as long as it may write
    there: a second run (a `--resume` included) is refused in one line instead of
    interleaving its checkpoints with the first's."""
    def busy(who: str) -> Exception:
        return CheckpointError(f"checkpoint folder {ckpt_dir} is being written by another "
                               f"training run{who}; wait for it to finish, or use another "
                               "--checkpoint-dir")

    return FolderLock(ckpt_dir, TRAIN_LOCK_FILE, busy)


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{int(epoch):05d}.pt"


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Checkpoint files (not sidecars, temp files or the latest link), oldest epoch first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME_RE.match(p.name)
        if m and p.is_file() and not p.is_symlink():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _non_finite(obj: Any, where: str = "") -> str | None:
    """Name of the first floating tensor holding NaN/inf in a nested state, else None."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            return where or "<tensor>"
        return None
    if isinstance(obj, dict):
        items: Any = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        bad = _non_finite(v, f"{where}.{k}" if where else str(k))
        if bad:
            return bad
    return None


def save_checkpoint(ckpt_dir: str | Path, state: dict[str, Any], epoch: int, keep_last: int = 3,
                    meta: dict[str, Any] | None = None) -> Path:
    """Write `state` (+ {"meta": meta}) as epoch_{epoch:05d}.pt atomically; return its path.

    Refuses (CheckpointError) a state with non-finite weights or optimiser moments, so a
    NaN can never become the checkpoint a resume starts from. Keeps the newest
    `keep_last` checkpoints and points `wgan_audio.pth.tar` at the one just written.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    bad = _non_finite(state)
    if bad:
        raise CheckpointError(f"refusing to save epoch {epoch}: non-finite values in {bad}")
    remove_temps(d)  # left by a writer that died mid-save
    payload = dict(state)
    payload["meta"] = dict(meta or {})
    newest = list_checkpoints(d)[-1:]
    if newest and int(_NAME_RE.match(newest[0].name).group(1)) > epoch:
        raise CheckpointError(
            f"{d} already holds a later checkpoint ({newest[0].name}) than epoch {epoch}; "
            f"resume from it or use a new checkpoint directory")
    path = d / checkpoint_name(epoch)
    atomic_write(path, lambda f: torch.save(payload, f))
    # hashed from the file as written (page cache), so the sidecar vouches for the bytes
    digest = _sha256_file(path)
    sidecar = path.with_name(path.name + ".sha256")
    line = f"{digest}  {path.name}\n".encode()
    atomic_write(sidecar, lambda f: f.write(line))
    _point_latest(d, path)
    fsync_dir(d)
    _prune(d, keep_last, keep=path)
    return path


def _point_latest(d: Path, target: Path) -> None:
    """Atomically (re)point the seed-named link at `target` (relative, so dirs can move)."""
    link = d / LATEST_NAME
    tmp = d / f"{TMP_PREFIX}{LATEST_NAME}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target.name, tmp)
    os.replace(tmp, link)


def _prune(d: Path, keep_last: int, keep: Path) -> None:
    ckpts = list_checkpoints(d)
    for old in ckpts[:-keep_last]:
        if old == keep:
            continue
        for p in (old, old.with_name(old.name + ".sha256")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def checkpoint_digest(path: str | Path) -> str:
    """The SHA-256 the checkpoint's sidecar records (what a task hands on with its path)."""
    p = Path(path)
    sidecar = p.with_name(p.name + ".sha256")
    try:
        return sidecar.read_text().split()[0]
    except (OSError, IndexError):
        raise CheckpointError(f"{p.name}: missing or empty hash file {sidecar.name}") from None


def verify_checkpoint(path: str | Path, sha256: str | None = None) -> None:
    """Raise CheckpointError unless `path` matches its SHA-256 sidecar (and `sha256`, the
    digest the task that wrote it handed on, when given)."""
    p = Path(path)
    expected = checkpoint_digest(p)
    if sha256 is not None and sha256 != expected:
        raise CheckpointError(f"{p.name}: not the checkpoint the previous block wrote "
                              f"(SHA-256 {expected[:12]}, expected {sha256[:12]})")
    actual = _sha256_file(p)
    if actual != expected:
        raise CheckpointError(f"{p.name}: SHA-256 mismatch (file is damaged)")


def load_checkpoint(path: str | Path, map_location: Any = "cpu", sha256: str | None = None
                    ) -> dict[str, Any]:
    """Verify and load one checkpoint; CheckpointError (one line) if it is damaged or, with
    `sha256`, is not the file with that digest."""
    p = Path(path)
    verify_checkpoint(p, sha256)
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # a verified file that still fails: wrong format/version
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{p.name}: cannot be loaded: {first}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{p.name}: not a checkpoint (top level is not a dict)")
    state.setdefault("meta", {})
    check_contents(state, p.name)
    return state


def check_contents(state: dict[str, Any], name: str = "checkpoint") -> None:
    """CheckpointError unless `state` holds finite weights for every network and counters.

    What the trainer's own load checks beyond this (optimiser and RNG states, shapes)
    fails there with its own one-line reason.
    """
    for key in WEIGHT_GROUPS:
        group = state.get(key)
        if not (isinstance(group, dict) and group and all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in group.items())):
            raise CheckpointError(f"{name}: no {key} weights (not a trainer checkpoint)")
    for key in COUNTERS:
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckpointError(f"{name}: {key} is missing or not a count")
    if not isinstance(state["meta"], dict):
        raise CheckpointError(f"{name}: meta is not a mapping")
    bad = _non_finite({k: state[k] for k in WEIGHT_GROUPS})
    if bad:
        raise CheckpointError(f"{name}: non-finite values in {bad}")


def load_latest(ckpt_dir: str | Path, map_location: Any = "cpu"
                ) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that verifies, as (state, path); None when there are none.

    A damaged newer checkpoint is skipped with a warning on the "audio_wgan" logger.
    Raises CheckpointError when checkpoints exist but none of them verifies.
    """
    ckpts = list_checkpoints(ckpt_dir)
    problems = []
    for p in reversed(ckpts):
        try:
            return load_checkpoint(p, map_location), p
        except CheckpointError as exc:
            problems.append(str(exc))
            log.warning("skipping damaged checkpoint %s: %s", p, exc)
    if problems:
        raise CheckpointError(f"no usable checkpoint in {ckpt_dir}: {'; '.join(problems)}")
    return None


def check_fingerprint(state_meta: dict[str, Any], fingerprint: str, warm_start: bool) -> None:
    """Refuse to resume against a store whose content changed, unless warm start is asked.

    Resuming is only exact when the data are the same; training on changed data from old
    weights is allowed, but it has to be asked for by name.
    """
    if warm_start:
        return
    saved = (state_meta or {}).get("fingerprint")
    if saved is None:
        raise CheckpointError(
            "checkpoint records no store fingerprint; use warm start to train from its weights")
    if saved != fingerprint:
        raise CheckpointError(
            f"store changed since the checkpoint (fingerprint {str(saved)[:12]} -> "
            f"{str(fingerprint)[:12]}); use warm start to continue from its weights, "
            f"or a new checkpoint directory")


def export_bundle_from_checkpoint(path: str | Path, out_dir: str | Path,
                                  extra: dict[str, Any] | None = None) -> Path:
    """The checkpoint's EMA generator as a model bundle, from the checkpoint file alone.

    Needs the EXPORT_META keys in the checkpoint's meta (checkpoints written before they
    were recorded lack the statistics: CheckpointError says so). The bundle passes the
    checks `load_bundle_dir` makes before anything is written. `extra` adds to the bundle's
    model.json (e.g. the MLflow run the model comes from).
    """
    from gan.spectral import MelConfig
    from storage.model_bundle import BundleError, save_bundle

    p = Path(path)
    state = load_checkpoint(p)
    meta = state["meta"]
    missing = [k for k in EXPORT_META if k not in meta]
    if missing:
        raise CheckpointError(f"{p.name} records no {', '.join(missing)}; it was written "
                              f"before checkpoints held them: export from the store instead")
    info = {"epoch": state["epoch"], "step": state["step"], "checkpoint": p.name,
            **{k: meta[k] for k in ("fingerprint", "store") if k in meta}}
    if isinstance(state.get("config"), dict):
        info["train_config"] = state["config"]
    info.update(extra or {})
    try:
        mel = MelConfig.from_dict(meta["mel"])
        return save_bundle(out_dir, state["ema_generator"], str(meta["preset"]),
                           list(meta["classes"]), mel, np.asarray(meta["norm_mean"]),
                           np.asarray(meta["norm_std"]), info)
    except (BundleError, ValueError, TypeError, AttributeError) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(f"{p.name}: cannot be exported: {text[:300]}") from None
