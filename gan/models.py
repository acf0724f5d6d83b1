"""The seed's conditional generator and critic, the conditioning that works, and presets.

`seed` is the architecture the seed document describes for 128x256 log-mels:
noise 100-D + label embedding 16-D -> linear -> reshape -> four stride-2
ConvTranspose2d (512->256->128->64->1, BatchNorm+ReLU between); the critic takes the
spectrogram plus a label map (2 channels) through four stride-2 Conv2d (2->32->64->128->256,
LeakyReLU) and a final Conv2d(256->1) over the remaining map. `small` and `tiny` only
shrink channel widths. Any n_mels/frames divisible by 16 works.

On real recordings the seed's conditioning is weak: the 16-D label enters once, at the
input, and the critic can ignore its label channel (bench/bench_quality.py). A `Preset` can
switch on, one by one, what the class-conditional GAN literature shows to work:

- `critic_cond="projection"`: the projection discriminator (Miyato & Koyama 2018): the
  critic sees the spectrogram only; its score is psi(phi(x)) + <embed(y), phi(x)> with
  phi(x) the globally sum-pooled last features, so the class enters as an inner product
  the critic cannot ignore. `"none"`: an unconditional critic (for AC-GAN alone).
- `gen_norm="cbn"`: conditional batch normalisation in the generator (as in SNGAN and
  BigGAN): every BatchNorm's scale and shift come from the class, so the label acts at
  every resolution, not only on the input vector.
- `ac_weight > 0`: an auxiliary classifier head on the critic's features (AC-GAN, Odena et
  al. 2017), trained on real rows and asked of generated ones. Only with a critic that does
  not read the label from its input (projection or none): one that does would learn to
  read the label map back and teach the generator nothing.
- `upsample="resize"`: nearest-neighbour upsampling + 3x3 convolution instead of
  transposed convolutions (Odena et al. 2016, "Deconvolution and checkerboard artifacts").
- `mbstd=True`: a minibatch standard-deviation channel before the critic's last layer
  (Karras et al. 2018), which lets the critic see a lack of variety. It couples the
  examples of a batch, so real and generated rows are scored in separate calls
  (`Critic.batch_coupled`), in contiguous groups of `MBSTD_GROUP`.

Output activation: the seed ends in ReLU because its targets were non-negative. Our
training data are per-mel-bin standardised log-mels (mean 0, std 1, both signs), so the
generator ends in a scaled tanh (range +-4 standard deviations, data are clipped to the
same range by the store reader), which bounds outputs without killing negative values.
"""

from __future__ import annotations

import torch
from torch import nn

from gan.presets import PRESETS, Preset, check_shape, get_preset, register_preset

__all__ = ["PRESETS", "Preset", "check_shape", "get_preset", "register_preset", "Generator",
           "Critic", "build_models", "OUTPUT_RANGE"]

OUTPUT_RANGE = 4.0  # generator output and normalised data live in [-4, 4]
MBSTD_GROUP = 4  # examples per minibatch-stddev group (StyleGAN's default)


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without its own affine; per-class scale (1 + gamma_y) and shift beta_y.

    Starts as plain BatchNorm (gamma = beta = 0), so a run begins like the unconditional
    layer and learns how much the class should change each channel.
    """

    def __init__(self, channels: int, n_classes: int, dims: int = 2) -> None:
        super().__init__()
        self.bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels, affine=False)
        self.gamma = nn.Embedding(n_classes, channels)
        self.beta = nn.Embedding(n_classes, channels)
        nn.init.zeros_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shape = (-1, x.shape[1]) + (1,) * (x.dim() - 2)
        g = (1.0 + self.gamma(labels)).view(shape)
        return self.bn(x) * g + self.beta(labels).view(shape)


def _up(cin: int, cout: int, how: str, bias: bool) -> nn.Module:
    if how == "transpose":
        return nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=bias)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(cin, cout, 3, 1, 1, bias=bias))


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
        self.cbn = preset.gen_norm == "cbn"
        width = c0 * self.h0 * self.w0
        linear = nn.Linear(preset.noise_dim + preset.embed_dim, width)
        chans = list(preset.g_channels)
        pairs = list(zip(chans[:-1], chans[1:], strict=True))
        if not self.cbn:  # the seed's layout, kept module for module
            self.project = nn.Sequential(linear, nn.BatchNorm1d(width), nn.ReLU(inplace=True))
            layers: list[nn.Module] = []
            for cin, cout in pairs:
                layers += [_up(cin, cout, preset.upsample, bias=False), nn.BatchNorm2d(cout),
                           nn.ReLU(inplace=True)]
            layers.append(_up(chans[-1], 1, preset.upsample, bias=True))
            self.net = nn.Sequential(*layers)
            return
        self.linear = linear
        self.norm0 = ConditionalBatchNorm(width, n_classes, dims=1)
        self.ups = nn.ModuleList(_up(cin, cout, preset.upsample, bias=False)
                                 for cin, cout in pairs)
        self.norms = nn.ModuleList(ConditionalBatchNorm(cout, n_classes) for _, cout in pairs)
        self.out = _up(chans[-1], 1, preset.upsample, bias=True)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = torch.cat([noise, self.embed(labels)], dim=1)
        c0 = self.preset.g_channels[0]
        if not self.cbn:
            x = self.project(x).view(-1, c0, self.h0, self.w0)
            return OUTPUT_RANGE * torch.tanh(self.net(x) / OUTPUT_RANGE)
        x = torch.relu(self.norm0(self.linear(x), labels)).view(-1, c0, self.h0, self.w0)
        for up, norm in zip(self.ups, self.norms, strict=True):
            x = torch.relu(norm(up(x), labels))
        return OUTPUT_RANGE * torch.tanh(self.out(x) / OUTPUT_RANGE)


def minibatch_stddev(x: torch.Tensor, group: int = MBSTD_GROUP, split: int | None = None
                     ) -> torch.Tensor:
    """x with one more channel: the mean std over contiguous groups of examples.

    Groups are contiguous (examples i*g .. i*g+g-1) and shrink to the largest divisor of
    the batch that is <= `group`. `split=b` computes the first b examples and the rest
    apart, so real rows and generated ones scored in one call never share a group.
    """
    if split is not None and 0 < split < x.shape[0]:
        return torch.cat([minibatch_stddev(x[:split], group), minibatch_stddev(x[split:], group)])
    b, c, h, w = x.shape
    g = min(group, b)
    while b % g:
        g -= 1
    y = x.float().view(b // g, g, c, h, w)
    std = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (b // g,)
    feat = std.repeat_interleave(g).view(b, 1, 1, 1).expand(b, 1, h, w).to(x.dtype)
    return torch.cat([x, feat], dim=1)


class Critic(nn.Module):
    """(mel (B, 1, n_mels, frames), labels (B,)) -> score (B,). No normalisation layers (GP).

    `forward(..., with_aux=True)` also returns the auxiliary class logits (AC-GAN presets);
    `split=b` keeps examples [:b] and [b:] apart in batch-coupled layers (minibatch stddev),
    so real and generated rows can be scored in one call (one DDP forward per backward).
    """

    def __init__(self, n_classes: int, n_mels: int, frames: int, preset: Preset) -> None:
        super().__init__()
        check_shape(n_mels, frames)
        self.n_mels, self.frames, self.preset = n_mels, frames, preset
        self.cond = preset.critic_cond
        self.batch_coupled = preset.mbstd
        if self.cond == "concat":
            self.embed = nn.Embedding(n_classes, preset.embed_dim)
            self.label_map = nn.Linear(preset.embed_dim, n_mels * frames)
        layers: list[nn.Module] = []
        cin = 2 if self.cond == "concat" else 1
        for cout in preset.d_channels:
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        c_last = preset.d_channels[-1]
        self.seed_layout = self.cond == "concat" and not preset.mbstd
        if self.seed_layout:  # the seed's critic, module for module (old checkpoints load)
            layers.append(nn.Conv2d(cin, 1, (n_mels // 16, frames // 16)))
        self.net = nn.Sequential(*layers)
        # minibatch stddev: one more channel, then a 3x3 conv that can use it (StyleGAN)
        self.head = (nn.Sequential(nn.Conv2d(c_last + 1, c_last, 3, 1, 1),
                                   nn.LeakyReLU(0.2, inplace=True))
                     if preset.mbstd else nn.Identity())
        # concat: the seed's last Conv2d over the whole remaining map; otherwise a linear
        # score of the sum-pooled features (the projection paper's psi)
        self.score = (None if self.seed_layout
                      else nn.Conv2d(c_last, 1, (n_mels // 16, frames // 16))
                      if self.cond == "concat" else nn.Linear(c_last, 1))
        if self.cond == "projection":
            self.proj = nn.Embedding(n_classes, c_last)
        self.aux = nn.Linear(c_last, n_classes) if preset.ac_weight > 0 else None

    def forward(self, mel: torch.Tensor, labels: torch.Tensor, with_aux: bool = False,
                split: int | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = mel
        if self.cond == "concat":
            lmap = self.label_map(self.embed(labels)).view(-1, 1, self.n_mels, self.frames)
            x = torch.cat([mel, lmap.to(mel.dtype)], dim=1)
        h = self.net(x)
        if self.score is None:
            return h.flatten()
        if self.batch_coupled:
            h = minibatch_stddev(h, split=split)
        h = self.head(h)
        feats = h.sum(dim=(2, 3))  # global sum pooling, as in the projection paper
        if self.cond == "concat":
            score = self.score(h).flatten()
        else:
            score = self.score(feats).flatten()
            if self.cond == "projection":
                score = score + (self.proj(labels).to(feats.dtype) * feats).sum(dim=1)
        if not with_aux:
            return score
        if self.aux is None:
            raise ValueError("this critic has no auxiliary classifier (ac_weight is 0)")
        return score, self.aux(feats)


def build_models(n_classes: int, n_mels: int, frames: int, preset: str | Preset
                 ) -> tuple[Generator, Critic]:
    p = get_preset(preset) if isinstance(preset, str) else preset
    return Generator(n_classes, n_mels, frames, p), Critic(n_classes, n_mels, frames, p)
