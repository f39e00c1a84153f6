"""A small synthetic segmentation dataset in nnU-Net's raw format, for the demo, the tests and the benchmarks.

Each image holds an ellipsoid (label 1) with a smaller blob inside (label 2) on a noisy background, with
intensities that differ per class, so a few training iterations already give a non-trivial segmentation. Labeled
cases go to imagesTr/labelsTr, unlabeled ones to imagesUnlabeled (no labels written), test cases to
imagesTs/labelsTs.
"""
import os
from typing import Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.errors import SSLConfigError


def make_case(shape: Sequence[int], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One (image, label) pair of the given (z, y, x) shape."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    shape_arr = np.array(shape, dtype=np.float32)[:, None, None, None]
    centre = shape_arr * rng.uniform(0.4, 0.6, size=(3, 1, 1, 1))
    radii = shape_arr * rng.uniform(0.2, 0.3, size=(3, 1, 1, 1))
    outer = (((grid - centre) / radii) ** 2).sum(0) <= 1
    inner = (((grid - centre) / (radii * 0.6)) ** 2).sum(0) <= 1
    label = outer.astype(np.uint8) + inner.astype(np.uint8)
    image = rng.normal(0.0, 0.3, size=shape).astype(np.float32) + np.array([0.0, 1.0, 2.0], np.float32)[label]
    return image * 100 + 200, label


def write_nifti(array: np.ndarray, path: str, spacing=(1.0, 1.0, 1.0)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    sitk.WriteImage(image, path)


def make_dataset(nnunet_raw: str, dataset_id: int = 990, name: str = "SSLDemo", num_labeled: int = 8,
                 num_unlabeled: int = 6, num_test: int = 3, shape: Sequence[int] = (24, 32, 28),
                 seed: int = 0) -> str:
    """Write ``Dataset<id>_<name>`` into ``nnunet_raw`` and return its folder."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    if num_labeled < 2:
        raise SSLConfigError("the synthetic dataset needs at least 2 labeled cases (nnU-Net plans from labels)")
    folder = os.path.join(nnunet_raw, f"Dataset{dataset_id:03d}_{name}")
    rng = np.random.default_rng(seed)
    groups = [("imagesTr", "labelsTr", "case", num_labeled), ("imagesUnlabeled", None, "unl", num_unlabeled),
              ("imagesTs", "labelsTs", "test", num_test)]
    for images_dir, labels_dir, prefix, count in groups:
        os.makedirs(os.path.join(folder, images_dir), exist_ok=True)
        if labels_dir:
            os.makedirs(os.path.join(folder, labels_dir), exist_ok=True)
        for i in range(count):
            case_shape = [s + int(rng.integers(-2, 3)) for s in shape]
            image, label = make_case(case_shape, rng)
            write_nifti(image, os.path.join(folder, images_dir, f"{prefix}_{i:03d}_0000.nii.gz"))
            if labels_dir:
                write_nifti(label, os.path.join(folder, labels_dir, f"{prefix}_{i:03d}.nii.gz"))
    generate_dataset_json(folder, {0: "MRI"}, {"background": 0, "outer": 1, "inner": 2}, num_labeled,
                          ".nii.gz", dataset_name=name,
                          description="synthetic ellipsoids made by nnunet_ssl.synthetic")
    return folder
