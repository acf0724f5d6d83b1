"""What `audio-wgan store-info` prints, from the committed manifest alone when it can be.

`summary_fields` builds the store-info dict from the manifest, the size on disk and the
chunking; `MelStore.info` uses it, and so does `quick_info`, which answers without Zarr or
numpy (so `store-info` starts at once): it reads the manifest under a reader lease, checks
that every chunk holding a committed row is stored (Zarr v3 chunk keys, a stat each) and
takes the normalisation statistics the manifest keeps. Whenever it cannot vouch for the
answer (an object store, statistics of another fingerprint, a missing chunk, anything
unreadable) it returns None and the caller opens the store with `MelStore.open`, which
gives the full check and the one-line error.
"""

from __future__ import annotations

import json
import math
from array import array
from pathlib import Path
from typing import Any

from storage.file_names import escape, printable
from storage.store_backend import LocalBackend, backend_for
from storage.store_generations import generation_prefix
from storage.store_manifest import Manifest, leased_manifest
from storage.store_names import ARRAY_NAMES, MELS, disk_bytes


def summary_fields(path: str | Path, manifest: Manifest, fingerprint: str, disk: int,
                   chunk_rows: int, mean: list[float], std: list[float]) -> dict[str, Any]:
    """The store-info dict (what `--json` prints) of a committed manifest."""
    m = manifest
    entries = m.live_entries()
    counts = dict.fromkeys(m.classes, 0)
    for e in entries:
        counts[m.classes[e.label]] += e.n_rows
    rows = sum(e.n_rows for e in entries)
    cfg = m.mel_config
    return {
        "path": str(path),
        "rows": rows,
        "classes": counts,
        "files": len(entries),
        "rejected": list(m.rejected),
        "ignored": list(m.ignored),
        "empty_classes": list(m.empty_classes),
        "mel": cfg.to_dict(),
        "bytes": disk,
        "nbytes_live": rows * cfg.n_mels * cfg.frames * 2,
        "stored_rows": m.rows,
        "dead_rows": m.rows - rows,
        "generation": m.generation,
        "chunk_rows": chunk_rows,
        "fingerprint": fingerprint,
        "stats": {"mean_db": math.fsum(mean) / len(mean) if mean else None,
                  "std_db": math.fsum(std) / len(std) if std else None},
        "format_version": m.format_version,
        "requeued": list(m.requeued),
        "linked_classes": list(m.linked_classes),
    }


def quick_info(path: str | Path) -> dict[str, Any] | None:
    """`summary_fields` of a local store without opening its arrays; None when only
    `MelStore.open` can answer (see the module docstring); StoreError, as from
    `MelStore.open`, when there is no store or no readable manifest."""
    be = backend_for(path)
    if not isinstance(be, LocalBackend):
        return None
    manifest, lease = leased_manifest(be)  # StoreError: the same line as a full open
    try:
        return _from_manifest(be.path, manifest)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    finally:
        lease.release()


def _from_manifest(root: Path, m: Manifest) -> dict[str, Any] | None:
    stats, fingerprint, live = m.stats, m.fingerprint(), m.live_rows() > 0
    if live and not (stats and stats.get("fingerprint") == fingerprint):
        return None  # an interrupted run: the statistics must be computed from the rows
    chunk_rows = stored_chunk_rows(root, m)
    if chunk_rows is None:
        return None
    # float32, as `MelStore.stats` serves them
    mean, std = (array("f", stats[k]).tolist() if live else [] for k in ("mean", "std"))
    return summary_fields(root, m, fingerprint, disk_bytes(root), chunk_rows, mean, std)


def stored_chunk_rows(root: Path, m: Manifest) -> int | None:
    """The rows per mel chunk when every array of a local store holds its committed rows
    and every chunk holding one is stored (a stat each); None when not, or when only Zarr
    can tell (another chunk key encoding). OSError, ValueError, KeyError: unreadable."""
    prefix = generation_prefix(m.generation)
    chunk_rows = 0
    for name in ARRAY_NAMES:
        meta = json.loads((root / prefix / name / "zarr.json").read_bytes())
        rows_per_chunk = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        if m.rows > int(meta["shape"][0]):
            return None
        cfg = m.mel_config
        if name == MELS and list(meta["shape"][1:]) != [cfg.n_mels, cfg.frames]:
            return None  # a full open says what is wrong
        if name == MELS:
            chunk_rows = rows_per_chunk
        keys = _chunk_keys(meta, -(-m.rows // rows_per_chunk))
        if keys is None or not all((root / prefix / name / k).is_file() for k in keys):
            return None
    return chunk_rows


def _chunk_keys(meta: dict[str, Any], n_chunks: int) -> list[str] | None:
    """Keys of the first `n_chunks` chunks along the rows, by the array's Zarr v3
    `chunk_key_encoding` ("default": c/i/0/0, "v2": i.0.0); None for any other."""
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        return None
    enc = meta.get("chunk_key_encoding", {"name": "default"})
    name = enc.get("name")
    sep = enc.get("configuration", {}).get("separator", "/" if name == "default" else ".")
    rest = [0] * (len(meta["shape"]) - 1)
    if name == "default":
        return [sep.join(["c", *map(str, [i, *rest])]) for i in range(n_chunks)]
    if name == "v2":
        return [sep.join(map(str, [i, *rest])) for i in range(n_chunks)]
    return None


def describe(info: dict[str, Any]) -> str:
    """Human-readable store-info text."""
    mel = info["mel"]
    lines = [
        f"store        {info['path']}",
        f"rows         {info['rows']} live ({info['dead_rows']} dead) from {info['files']} files"
        + (" (`audio-wgan compact` drops the dead ones)" if info["dead_rows"] else ""),
        f"size         {info['bytes'] / 1e6:.1f} MB on disk, "
        f"{info['nbytes_live'] / 1e6:.1f} MB as float16",
        f"mel          {mel['n_mels']} mels x {mel['frames']} frames @ {mel['sample_rate']} Hz "
        f"(n_fft {mel['n_fft']}, hop {mel['hop_length']}, long clips: "
        f"{mel['long_clip_policy']}, short clips: {mel['pad_policy']})",
        f"fingerprint  {info['fingerprint']}",
        f"classes      {len(info['classes'])}",
    ]
    lines += [f"  {i:3d} {name:<24} {n:7d} rows"
              for i, (name, n) in enumerate(info["classes"].items())]
    if info["empty_classes"]:
        lines.append(f"empty class folders (no class created): {', '.join(info['empty_classes'])}")
    if info.get("linked_classes"):
        lines.append("linked class folders (outside DATA_DIR): " + ", ".join(
            f"{c['class']} -> {c['target']}" for c in info["linked_classes"]))
    if info["rejected"]:
        lines.append(f"rejected     {len(info['rejected'])} files")
        lines += [f"  {r['path']}: {r['reason']}" for r in info["rejected"]]
    if info["ignored"]:
        lines.append(f"ignored      {len(info['ignored'])} files")
        lines += [f"  {r['path']}: {r['reason']}" for r in info["ignored"]]
    if info.get("requeued"):
        lines.append(f"re-queued    {len(info['requeued'])} files whose rows were in damaged "
                     "chunks (the next precompute computes them again)")
        lines += [f"  {p}" for p in info["requeued"]]
    return "\n".join(safe_text(line) for line in lines)


def describe_verify(v: dict[str, Any]) -> str:
    """Human-readable result of `MelStore.verify`."""
    lines = [f"verify       {v['chunks']} chunks: "
             + ("intact" if v["ok"] else f"{len(v['damaged'])} damaged")]
    for d in v["damaged"]:
        lines.append(f"  chunk {d['chunk']} of {d['array']} (rows {d['rows'][0]}-"
                     f"{d['rows'][1]}) {d['problem']}")
    if v["files"]:
        lines.append(f"  files with rows in them: {', '.join(v['files'])}")
    if v["without_checksum"]:
        lines.append(f"  {v['without_checksum']} chunks have no checksum (written before "
                     "checksums existed): checked that they decode")
    return "\n".join(safe_text(line) for line in lines)


def verify_summary(store: str | Path, v: dict[str, Any]) -> str:
    """The one line a failed verify ends with."""
    d = v["damaged"]
    first = f"chunk {d[0]['chunk']} of {d[0]['array']} (rows {d[0]['rows'][0]}-" \
            f"{d[0]['rows'][1]}) {d[0]['problem']}"
    more = f" and {len(d) - 1} more chunk(s)" if len(d) > 1 else ""
    return safe_text(f"store {store} is damaged: {first}{more}, holding rows of "
                     f"{len(v['files'])} kept file(s); `audio-wgan compact --drop-damaged "
                     f"{store}` drops those rows and re-queues the files for the next "
                     "precompute")


def safe_text(s: str) -> str:
    """Printable one-line-safe form of text that may carry file names with undecodable
    bytes (surrogate escapes): such bytes are shown as `\\xHH`, losslessly."""
    return "\n".join(printable(line) for line in s.split("\n"))


def to_json(info: dict[str, Any]) -> str:
    """JSON whose names are in the store's lossless escaped form (storage.file_names)."""
    return json.dumps(_escaped(info), indent=2, ensure_ascii=False, default=str)


def _escaped(x: Any) -> Any:
    if isinstance(x, str):
        return escape(x)
    if isinstance(x, dict):
        return {_escaped(k): _escaped(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_escaped(v) for v in x]
    return x
