"""Network outputs as the trainers get them: a logits tensor, or nnU-Net's deep-supervision list (full resolution
first)."""
from typing import List, Sequence, Union

import torch
import torch.nn.functional as F

#: a network output: one logits tensor, or nnU-Net's deep-supervision list of them
Output = Union[torch.Tensor, Sequence[torch.Tensor]]


def probabilities(logits: torch.Tensor, regions: bool, channel_dim: int = 1) -> torch.Tensor:
    """Per-voxel class probabilities in float32: softmax over the channels (dimension ``channel_dim``), or sigmoid
    per region channel."""
    logits = logits.float()
    return torch.sigmoid(logits) if regions else torch.softmax(logits, dim=channel_dim)


def full_resolution(output: Output) -> torch.Tensor:
    """The full-resolution logits of a network output (index 0 of a deep-supervision list)."""
    return output[0] if isinstance(output, (list, tuple)) else output


def batch_part(output: Output, part: slice) -> Union[torch.Tensor, List[torch.Tensor]]:
    """The samples ``part`` of a network output, for a deep-supervision list as for a single tensor."""
    return [o[part] for o in output] if isinstance(output, (list, tuple)) else output[part]


def deep_supervision_targets(target: torch.Tensor, output: Output) -> Union[torch.Tensor, List[torch.Tensor]]:
    """A full-resolution target (label map, region channels or a masked-loss target) at the resolution of every
    output of a deep-supervision list, downsampled as nnU-Net downsamples its labels for deep supervision
    (``DownsampleSegForDSTransform``: nearest-exact interpolation); ``target`` itself for a single output."""
    if not isinstance(output, (list, tuple)):
        return target
    return [target if o.shape[2:] == target.shape[2:] else
            F.interpolate(target.float(), o.shape[2:], mode="nearest-exact").to(target.dtype) for o in output]
