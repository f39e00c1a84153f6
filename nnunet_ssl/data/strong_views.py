"""A strongly perturbed copy of an augmented image, with the same geometry (for weak-to-strong consistency).

Appended to the unlabeled transforms, :class:`StrongView` copies the already (spatially) augmented ``image`` into
``image_strong`` and perturbs only the copy's intensities, so a pseudo-label predicted on ``image`` lines up voxel
by voxel with a prediction on ``image_strong``. All perturbations are batchgeneratorsv2's, with wider ranges and
higher probabilities than nnU-Net's own augmentation.
"""
from dataclasses import dataclass
from typing import Tuple

from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform

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


class StrongView(BasicTransform):
    """Adds ``key`` (default ``image_strong``): a copy of ``image`` passed through ``intensity`` (``image`` itself
    is untouched). Two of them with different keys give two independently perturbed views."""

    def __init__(self, intensity: BasicTransform, key: str = STRONG_VIEW_KEY):
        super().__init__()
        self.intensity = intensity
        self.key = key

    def apply(self, data_dict, **params):
        data_dict[self.key] = self.intensity(image=data_dict["image"].clone())["image"]
        return data_dict
