"""Loaders: random unlabeled patches, and a composite loader so one worker pool feeds both streams.

The composite loader returns nnU-Net's labeled batch (``data``, ``target``, ``keys``) plus ``batch['unlabeled']``
(``data``, ``keys`` and any further tensor a method's unlabeled transforms produce, e.g. a second view). Both
streams run inside nnU-Net's augmentation workers, so the unlabeled stream adds work to the same pool instead of
a second one competing for cores.
"""
from typing import Sequence

import torch
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase
from threadpoolctl import threadpool_limits

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_ssl.data.unlabeled import UnlabeledImages
from nnunet_ssl.nnunet_internals import random_image_patch, sample_without_ignore


def nonzero_mask_segmentation(image: torch.Tensor, mask_channels: Sequence[int]) -> torch.Tensor:
    """nnU-Net's nonzero mask in its segmentation encoding (0 inside, -1 outside), read from a preprocessed image:
    normalisation with ``use_mask_for_norm`` sets every voxel outside the mask to exactly 0 (and patches are padded
    with 0), while a voxel inside is 0 only if it equals the channel's mean in every masked channel."""
    inside = (image[list(mask_channels)] != 0).any(0, keepdim=True)
    return torch.where(inside, 0, -1).to(torch.int16)


class UnlabeledDataLoader(nnUNetDataLoader):
    """nnU-Net's patch sampling without labels: random boxes (no foreground oversampling, no class locations),
    the image only. The batch carries no ``target``.

    With ``mask_channels`` (the channels nnU-Net normalises within the nonzero mask, ``use_mask_for_norm``) the
    transforms also get that mask as ``segmentation``, derived from the image, never from a label file, so that
    nnU-Net's MaskImageTransform sets the region outside it back to 0 after intensity augmentation, as for the
    labeled patches. The mask is dropped from the batch."""

    def __init__(self, data: UnlabeledImages, batch_size: int, patch_size, final_patch_size,
                 label_manager: LabelManager, transforms=None, mask_channels: Sequence[int] = ()):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, transforms=transforms)
        sample_without_ignore(self)  # no annotation to restrict sampling to
        self.mask_channels = list(mask_channels)

    def generate_train_batch(self):
        keys = self.get_indices()
        samples = []
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for key in keys:
                sample = {"image": random_image_patch(self, key).float()}
                if self.mask_channels:
                    sample["segmentation"] = nonzero_mask_segmentation(sample["image"], self.mask_channels)
                if self.transforms is not None:
                    sample = self.transforms(**sample)
                sample.pop("segmentation", None)
                samples.append(sample)
        batch = {"data": torch.stack([s.pop("image") for s in samples]), "keys": keys}
        for name in samples[0]:
            if isinstance(samples[0][name], torch.Tensor):
                batch[name] = torch.stack([s[name] for s in samples])
        return batch


class CompositeDataLoader(SlimDataLoaderBase):
    """One labeled and one unlabeled batch per draw."""

    def __init__(self, labeled: nnUNetDataLoader, unlabeled: UnlabeledDataLoader):
        super().__init__(None, labeled.batch_size)
        self.labeled = labeled
        self.unlabeled = unlabeled

    def generate_train_batch(self):
        batch = self.labeled.generate_train_batch()
        batch["unlabeled"] = self.unlabeled.generate_train_batch()
        return batch


def split_batch_across_ranks(global_batch_size: int, world_size: int, rank: int) -> int:
    """This rank's share of a global batch, distributed as nnU-Net distributes the labeled batch under DDP."""
    if global_batch_size < world_size:
        raise ValueError(f"unlabeled batch size {global_batch_size} is smaller than the number of GPUs {world_size}")
    shares = [global_batch_size // world_size + (1 if i < global_batch_size % world_size else 0)
              for i in range(world_size)]
    return shares[rank]

