"""What precompute learns of one source file (`Extracted`) and why a file cannot become rows
(`ClipRejected`).

Plain data, without torch: the process that writes the store unpickles its worker
processes' outcomes, and importing this module is all that takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class ClipRejected(Exception):
    """A file that cannot become training rows; str(exc) is the one-line reason.

    `by_content`: the file's own bytes decided it (silent, not audio, too short, a bad
    header, ...), so the same bytes and decoder give the same answer and the rejection is
    remembered until the file or libsndfile changes. Otherwise (a limit, an OS error, a
    file changing while read) the file is tried again on every run.
    """

    def __init__(self, reason: str, by_content: bool = False) -> None:
        super().__init__(reason)
        self.by_content = by_content

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self), self.by_content)


@dataclass
class Extracted:
    """Outcome for one file: status "new" (rows computed), "same" (hash unchanged),
    "rejected" (reason; `by_content` as ClipRejected's) or "vanished" (deleted since the
    scan)."""

    path: str
    class_name: str
    size: int
    mtime_ns: int
    status: str
    hash: str = ""
    reason: str = ""
    by_content: bool = False
    mels: np.ndarray | None = None  # float16 (K, n_mels, frames)
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sums: np.ndarray | None = None  # float64 (K, 2, n_mels), see storage.store_layout.mel_sums
    sample_rate: int = 0
    channels: int = 0
    samples: int = 0
