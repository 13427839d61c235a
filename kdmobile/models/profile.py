"""Parameter and FLOP counts, the size numbers every table in kdmobile reports, and random weights fit for timing."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass (a multiply-add counts 2), measured by torch's FlopCounterMode in eval mode."""
    was_training = module.training
    module.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


@torch.no_grad()
def randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Give BatchNorm layers non-trivial statistics and affine weights (DESIGN.md: otherwise zero-initialised
    residual branches fold away at export and a timing of random weights means nothing)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_((torch.rand(n, generator=g) - 0.5) * 0.2)
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            if m.weight is not None:
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_((torch.rand(n, generator=g) - 0.5) * 0.2)
