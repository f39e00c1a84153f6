"""A strongly perturbed copy of an augmented image, with the same geometry (for weak-to-strong consistency).

Appended to the unlabeled transforms, :class:`StrongView` copies the already (spatially) augmented ``image`` into
``image_strong`` and perturbs only the copy's intensities, so a pseudo-label predicted on ``image`` lines up voxel
by voxel with a prediction on ``image_strong``. All perturbations are batchgeneratorsv2's, with wider ranges and
higher probabilities than nnU-Net's own augmentation. Where the plans normalise channels within the nonzero mask
(``use_mask_for_norm``), the copy is set back to 0 outside that mask afterwards, as nnU-Net does after its own
intensity augmentation (the weak view, masked by nnU-Net's transforms, tells where the outside is).
"""
from dataclasses import dataclass
from typing import Sequence, Tuple

import torch

from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform

from nnunet_ssl.data.loaders import nonzero_mask_segmentation

STRONG_VIEW_KEY = "image_strong"


@dataclass(frozen=True)
class StrongIntensity:
    """Probabilities and ranges of the strong intensity perturbations, each applied independently in this order.
    Defaults follow the strong view of FixMatch/UniMatch translated to single-channel medical images: colour
    jitter's brightness and contrast (factor 0.5-1.5, p 0.8), Gaussian blur (sigma 0.1-2 voxels, p 0.5); plus
    gamma and Gaussian noise at twice nnU-Net's ranges (p 0.5). Brightness, contrast and gamma draw below and above
    1 with equal chance, as nnU-Net does."""
    brightness: Tuple[float, float] = (0.5, 1.5)
    p_brightness: float = 0.8
    contrast: Tuple[float, float] = (0.5, 1.5)
    p_contrast: float = 0.8
    gamma: Tuple[float, float] = (0.5, 2.0)
    p_gamma: float = 0.5
    blur_sigma: Tuple[float, float] = (0.1, 2.0)
    p_blur: float = 0.5
    noise_variance: Tuple[float, float] = (0.0, 0.2)
    p_noise: float = 0.5


def strong_intensity_transforms(config: StrongIntensity) -> ComposeTransforms:
    """The chain of intensity-only perturbations described by ``config``."""
    return ComposeTransforms([
        RandomTransform(MultiplicativeBrightnessTransform(BGContrast(config.brightness), synchronize_channels=False),
                        apply_probability=config.p_brightness),
        RandomTransform(ContrastTransform(BGContrast(config.contrast), preserve_range=True,
                                          synchronize_channels=False), apply_probability=config.p_contrast),
        RandomTransform(GammaTransform(BGContrast(config.gamma), p_invert_image=0, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=config.p_gamma),
        RandomTransform(GaussianBlurTransform(config.blur_sigma, synchronize_channels=False, synchronize_axes=True,
                                              benchmark=True), apply_probability=config.p_blur),
        RandomTransform(GaussianNoiseTransform(config.noise_variance, synchronize_channels=True),
                        apply_probability=config.p_noise),
    ])


def perturbed_within_mask(intensity: BasicTransform, image: torch.Tensor,
                          mask_channels: Sequence[int]) -> torch.Tensor:
    """``intensity`` applied to a copy of ``image``, then 0 in ``mask_channels`` wherever ``image`` is outside its
    nonzero mask (nnU-Net's masking after intensity augmentation, for ``use_mask_for_norm`` channels)."""
    perturbed = intensity(image=image.clone())["image"]
    if mask_channels:
        channels = list(mask_channels)
        outside = nonzero_mask_segmentation(image, channels) < 0
        perturbed[channels] = torch.where(outside, 0.0, perturbed[channels])
    return perturbed


class MaskedIntensity(BasicTransform):
    """``intensity`` applied to ``image`` itself, the outside of the nonzero mask kept at 0 in ``mask_channels``
    (see :func:`perturbed_within_mask`)."""

    def __init__(self, intensity: BasicTransform, mask_channels: Sequence[int] = ()):
        super().__init__()
        self.intensity = intensity
        self.mask_channels = list(mask_channels)

    def apply(self, data_dict, **params):
        data_dict["image"] = perturbed_within_mask(self.intensity, data_dict["image"], self.mask_channels)
        return data_dict


class StrongView(BasicTransform):
    """Adds ``key`` (default ``image_strong``): a copy of ``image`` passed through ``intensity`` (``image`` itself
    is untouched), then 0 in ``mask_channels`` outside the nonzero mask of ``image``. Two of them with different
    keys give two independently perturbed views."""

    def __init__(self, intensity: BasicTransform, key: str = STRONG_VIEW_KEY, mask_channels: Sequence[int] = ()):
        super().__init__()
        self.intensity = intensity
        self.key = key
        self.mask_channels = list(mask_channels)

    def apply(self, data_dict, **params):
        data_dict[self.key] = perturbed_within_mask(self.intensity, data_dict["image"], self.mask_channels)
        return data_dict
