"""WGAN-GP losses (Gulrajani et al. 2017), written to stay sound under mixed precision.

The critic maximises D(real) - D(fake) with a penalty pulling the norm of its input
gradient towards 1 on random interpolates of real and fake examples; the generator
maximises D(fake). Reductions and the penalty are done in float32 even when the critic
ran in bf16/fp16, and a loss-scaled gradient (fp16 + GradScaler) is unscaled before its
norm is taken, as in PyTorch's AMP "gradient penalty" recipe.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Added under the square root so the norm's gradient stays finite when the input
# gradient is exactly zero (sqrt'(0) is infinite and would turn the step into NaN).
NORM_EPS = 1e-12


def wasserstein_estimate(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """mean D(real) - mean D(fake), in float32: the critic's estimate of the W1 distance."""
    return d_real.float().mean() - d_fake.float().mean()


def critic_loss(d_real: torch.Tensor, d_fake: torch.Tensor, gp: torch.Tensor,
                gp_weight: float) -> torch.Tensor:
    """Critic objective to minimise: -(W estimate) + gp_weight * penalty."""
    return -wasserstein_estimate(d_real, d_fake) + gp_weight * gp


def generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """Generator objective to minimise: -mean D(fake)."""
    return -d_fake.float().mean()


def interpolate(real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None
                ) -> torch.Tensor:
    """Per-sample uniform mix of real and fake (float32), the points where GP is enforced."""
    eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device,
                     dtype=torch.float32, generator=generator)
    return torch.lerp(fake.detach().float(), real.detach().float(), eps)


def gradient_penalty(critic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     interp: torch.Tensor, labels: torch.Tensor,
                     scale: float | torch.Tensor | None = None) -> torch.Tensor:
    """mean((||dD/dx|| - 1)^2) over the batch at `interp`, differentiable w.r.t. the critic.

    `scale` is the GradScaler's current scale when the critic runs in fp16: the critic's
    output is multiplied by it before autograd (so small fp16 gradients don't underflow)
    and the input gradient is divided by it again before the norm, in float32.
    """
    x = interp.detach().requires_grad_(True)
    out = critic(x, labels).float().sum()
    if scale is not None:
        out = out * scale
    (grad,) = torch.autograd.grad(out, x, create_graph=True)
    grad = grad.float().flatten(1)
    if scale is not None:
        grad = grad / scale
    norm = torch.sqrt(grad.pow(2).sum(dim=1) + NORM_EPS)
    return (norm - 1.0).pow(2).mean()
