"""Exponential moving average of a network (mean teacher, UA-MT)."""
import torch
from torch import nn


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """``target = decay * target + (1 - decay) * source`` for parameters and floating-point buffers, in place;
    other buffers (counters) are copied. Both modules must have the same structure."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1 - decay)
    for t, s in zip(target.buffers(), source.buffers()):
        if t.dtype.is_floating_point:
            t.mul_(decay).add_(s, alpha=1 - decay)
        else:
            t.copy_(s)


def ema_decay(step: int, decay: float) -> float:
    """The EMA decay at optimizer step ``step`` (from 0) with SSL4MIS's warm-up: ``min(1 - 1 / (step + 1), decay)``,
    so the average of the first steps follows the network closely (0 at step 0: a plain copy)."""
    return min(1 - 1 / (step + 1), decay)
