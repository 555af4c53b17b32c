"""Helpers shared by the tests that compare networks across back ends."""

import torch
from torch import nn


def randomized(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and batch-norm statistics, so that every channel matters; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "weight" in name else 0.1))
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net.eval()
