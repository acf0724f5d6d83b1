"""Embedded defaults shared by the flows, prefect.yaml and the CLI.

Paths are relative to the working directory (the project root for deployments), so a
fresh checkout runs every deployment with no parameters.
"""

from __future__ import annotations

from gan.presets import BUILTIN_PRESETS

WORK_DIR = "work"
DEMO_DATA_DIR = f"{WORK_DIR}/demo-data"
STORE = f"{WORK_DIR}/mels.zarr"
CHECKPOINT_DIR = f"{WORK_DIR}/checkpoints"
SAMPLES_DIR = f"{WORK_DIR}/samples"
MODEL_NAME = "audio-wgan"
EXPERIMENT = "audio-wgan"

# The demo pipeline trains on the CPU in minutes, so it uses 1 s, 64x64 log-mels at 16 kHz.
# `audio-wgan precompute` on user data defaults to the seed's 128x256 at 22.05 kHz instead.
DEMO_MEL: dict[str, int] = {
    "sample_rate": 16000,
    "n_fft": 512,
    "hop_length": 256,
    "n_mels": 64,
    "frames": 64,
}
DEMO_CLIPS_PER_CLASS = 40
DEMO_PRESET = "small"
PRESET_NAMES = BUILTIN_PRESETS
DEFAULT_PRESET = "small-proj-cbn-diffaug"  # for `train` on user data (BENCHMARKS.md, quality)
