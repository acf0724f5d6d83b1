"""Named architectures: plain data, importable without torch (the CLI lists them at once).

What each switch does is documented in `gan.models`, which builds the networks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

CRITIC_CONDS = ("concat", "projection", "none")
GEN_NORMS = ("bn", "cbn")
UPSAMPLES = ("transpose", "resize")
AUGMENTS = ("translation", "cutout")  # gan.augment.POLICIES


@dataclass(frozen=True)
class Preset:
    """A named architecture: widths plus the conditioning switches (see gan.models)."""

    name: str
    g_channels: tuple[int, int, int, int]  # channels after the projection, then each up-block
    d_channels: tuple[int, int, int, int]
    noise_dim: int = 100
    embed_dim: int = 16
    critic_cond: str = "concat"
    gen_norm: str = "bn"
    upsample: str = "transpose"
    mbstd: bool = False
    ac_weight: float = 0.0  # weight of the auxiliary classification loss (0: no head)
    # DiffAugment transforms applied to everything the critic sees (gan.augment)
    augment: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.critic_cond not in CRITIC_CONDS:
            raise ValueError(f"critic_cond must be one of {CRITIC_CONDS}")
        if self.gen_norm not in GEN_NORMS:
            raise ValueError(f"gen_norm must be one of {GEN_NORMS}")
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {UPSAMPLES}")
        if self.ac_weight < 0:
            raise ValueError("ac_weight must be >= 0")
        unknown = [a for a in self.augment if a not in AUGMENTS]
        if unknown:
            raise ValueError(f"unknown augmentation {unknown[0]!r}; choose from {AUGMENTS}")
        if self.ac_weight > 0 and self.critic_cond == "concat":
            raise ValueError("an auxiliary classifier needs a critic that does not read the "
                             "label from its input (critic_cond projection or none)")

    def variant(self, name: str, **changes: Any) -> Preset:
        """This preset with some switches changed, under a new name."""
        return dataclasses.replace(self, name=name, **changes)


_SMALL = Preset("small", (128, 64, 32, 16), (16, 32, 64, 128))
PRESETS: dict[str, Preset] = {
    "seed": Preset("seed", (512, 256, 128, 64), (32, 64, 128, 256)),
    "small": _SMALL,
    "tiny": Preset("tiny", (16, 8, 8, 4), (4, 8, 8, 16)),
    # `small`'s widths with the conditioning that won on real recordings (BENCHMARKS.md,
    # "Quality on real recordings"): projection critic + conditional BatchNorm
    "small-proj-cbn": _SMALL.variant("small-proj-cbn", critic_cond="projection",
                                     gen_norm="cbn"),
}
# ... plus DiffAugment's time translation on everything the critic sees, which won over
# it on real recordings at the same CPU budget (BENCHMARKS.md, "Quality ... contenders")
PRESETS["small-proj-cbn-diffaug"] = PRESETS["small-proj-cbn"].variant(
    "small-proj-cbn-diffaug", augment=("translation",))
BUILTIN_PRESETS = tuple(PRESETS)


def register_preset(preset: Preset) -> Preset:
    """Make a preset known by name (benchmarks register their variants this way)."""
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def check_shape(n_mels: int, frames: int) -> None:
    if n_mels % 16 or frames % 16 or n_mels < 16 or frames < 16:
        raise ValueError(f"n_mels ({n_mels}) and frames ({frames}) must both be divisible by 16 "
                         f"(and at least 16) for the generator and critic")
