"""The seed's conditional generator and critic, with size presets.

`seed` is the architecture the seed document describes for 128x256 log-mels:
noise 100-D + label embedding 16-D -> linear -> reshape -> four stride-2
ConvTranspose2d (512->256->128->64->1, BatchNorm+ReLU between); the critic takes the
spectrogram plus a label map (2 channels) through four stride-2 Conv2d (2->32->64->128->256,
LeakyReLU) and a final Conv2d(256->1) over the remaining map. `small` and `tiny` only
shrink channel widths. Any n_mels/frames divisible by 16 works.

Output activation: the seed ends in ReLU because its targets were non-negative. Our
training data are per-mel-bin standardised log-mels (mean 0, std 1, both signs), so the
generator ends in a scaled tanh (range +-4 standard deviations, data are clipped to the
same range by the store reader), which bounds outputs without killing negative values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

OUTPUT_RANGE = 4.0  # generator output and normalised data live in [-4, 4]


@dataclass(frozen=True)
class Preset:
    name: str
    g_channels: tuple[int, int, int, int]  # channels after the projection, then each up-block
    d_channels: tuple[int, int, int, int]
    noise_dim: int = 100
    embed_dim: int = 16


PRESETS: dict[str, Preset] = {
    "seed": Preset("seed", (512, 256, 128, 64), (32, 64, 128, 256)),
    "small": Preset("small", (128, 64, 32, 16), (16, 32, 64, 128)),
    "tiny": Preset("tiny", (16, 8, 8, 4), (4, 8, 8, 16)),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def check_shape(n_mels: int, frames: int) -> None:
    if n_mels % 16 or frames % 16:
        raise ValueError(f"n_mels ({n_mels}) and frames ({frames}) must both be divisible by 16")


class Generator(nn.Module):
    """(noise (B, noise_dim), labels (B,)) -> normalised log-mel (B, 1, n_mels, frames)."""

    def __init__(self, n_classes: int, n_mels: int, frames: int, preset: Preset) -> None:
        super().__init__()
        check_shape(n_mels, frames)
        self.n_classes, self.n_mels, self.frames, self.preset = n_classes, n_mels, frames, preset
        self.noise_dim = preset.noise_dim
        c0 = preset.g_channels[0]
        self.h0, self.w0 = n_mels // 16, frames // 16
        self.embed = nn.Embedding(n_classes, preset.embed_dim)
        self.project = nn.Sequential(
            nn.Linear(preset.noise_dim + preset.embed_dim, c0 * self.h0 * self.w0),
            nn.BatchNorm1d(c0 * self.h0 * self.w0),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        chans = list(preset.g_channels)
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.ConvTranspose2d(chans[-1], 1, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = torch.cat([noise, self.embed(labels)], dim=1)
        x = self.project(x).view(-1, self.preset.g_channels[0], self.h0, self.w0)
        return OUTPUT_RANGE * torch.tanh(self.net(x) / OUTPUT_RANGE)


class Critic(nn.Module):
    """(mel (B, 1, n_mels, frames), labels (B,)) -> score (B,). No normalisation layers (GP)."""

    def __init__(self, n_classes: int, n_mels: int, frames: int, preset: Preset) -> None:
        super().__init__()
        check_shape(n_mels, frames)
        self.n_mels, self.frames = n_mels, frames
        self.embed = nn.Embedding(n_classes, preset.embed_dim)
        self.label_map = nn.Linear(preset.embed_dim, n_mels * frames)
        layers: list[nn.Module] = []
        cin = 2
        for cout in preset.d_channels:
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, (n_mels // 16, frames // 16)))
        self.net = nn.Sequential(*layers)

    def forward(self, mel: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        lmap = self.label_map(self.embed(labels)).view(-1, 1, self.n_mels, self.frames)
        return self.net(torch.cat([mel, lmap.to(mel.dtype)], dim=1)).flatten()


def build_models(n_classes: int, n_mels: int, frames: int, preset: str | Preset
                 ) -> tuple[Generator, Critic]:
    p = get_preset(preset) if isinstance(preset, str) else preset
    return Generator(n_classes, n_mels, frames, p), Critic(n_classes, n_mels, frames, p)
