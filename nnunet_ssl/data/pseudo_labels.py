"""Pseudo-labels on disk, and the dataset and transform that feed them to nnU-Net's loader.

``nnunet_ssl_pseudolabel`` writes, for the student's dataset, plans, configuration and fold,
``$nnUNet_preprocessed/<Dataset>/pseudolabels/<plans>__<configuration>/fold_<F>/``:

* ``<case>_pseudo.b2nd``: int16, shape ``(2, *preprocessed image shape)``; channel 0 the teacher's segmentation,
  channel 1 its confidence x 10000 (max softmax probability; regions: the least certain region's max(p, 1 - p)).
  One array rather than two files so that nnU-Net's loader crops both from the memory-mapped file with one
  ``crop_and_pad_nd`` call; :class:`ConfidenceToIgnore`, first of the training transforms, turns the pair into one
  label map whose unconfident voxels carry the ignore label.
* ``<case>.pkl``: ``class_locations`` of the pseudo-label (for nnU-Net's foreground oversampling; a
  split-unlabeled case's own ``.pkl`` holds locations of its true label and is never read).
* ``pseudolabels.json``: the manifest, naming the teacher and the plans, configuration and split they fit.

Pseudo-labels are in the preprocessed space (same plans, configuration, cropping and spacing as the images), so a
student trains on them without any re-preprocessing.
"""
import json
import os
from typing import Dict, List

import blosc2
import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import load_pickle, write_pickle
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params

PSEUDO_LABELS_FOLDER = "pseudolabels"
MANIFEST = "pseudolabels.json"
PSEUDO_SUFFIX = "_pseudo.b2nd"
CONFIDENCE_SCALE = 10000


def pseudo_label_folder(preprocessed_dataset_base: str, plans: str, configuration: str, fold) -> str:
    return os.path.join(preprocessed_dataset_base, PSEUDO_LABELS_FOLDER, f"{plans}__{configuration}", f"fold_{fold}")


def confidence(probabilities: torch.Tensor, has_regions: bool) -> torch.Tensor:
    """Per-voxel confidence of the argmax (labels) or of the thresholded sigmoids (regions) of ``(C, ...)``."""
    if has_regions:
        return torch.maximum(probabilities, 1 - probabilities).amin(0)
    return probabilities.amax(0)


def save_pseudo_label(folder: str, case: str, segmentation: np.ndarray, confidence_map: np.ndarray,
                      class_locations: dict, patch_size) -> None:
    """Write one case (``segmentation`` and ``confidence_map`` of the image's spatial shape). The ``.pkl`` comes
    last, so a case counts as done only when complete (see :func:`cases_done`)."""
    pair = np.stack((segmentation, np.round(confidence_map * CONFIDENCE_SCALE))).astype(np.int16)
    blocks, chunks = comp_blosc2_params(pair.shape, tuple(patch_size), pair.itemsize)
    path = os.path.join(folder, case + PSEUDO_SUFFIX)
    if os.path.isfile(path):
        os.remove(path)
    blosc2.asarray(np.ascontiguousarray(pair), urlpath=path, chunks=chunks, blocks=blocks,
                   cparams={"codec": blosc2.Codec.LZ4HC, "clevel": 5, "nthreads": 1})
    write_pickle({"class_locations": class_locations}, os.path.join(folder, case + ".pkl.tmp"))
    os.replace(os.path.join(folder, case + ".pkl.tmp"), os.path.join(folder, case + ".pkl"))


def cases_done(folder: str) -> List[str]:
    """Cases with a complete pseudo-label in ``folder``."""
    if not os.path.isdir(folder):
        return []
    files = set(os.listdir(folder))
    return sorted(f[:-len(PSEUDO_SUFFIX)] for f in files
                  if f.endswith(PSEUDO_SUFFIX) and f[:-len(PSEUDO_SUFFIX)] + ".pkl" in files)


def read_manifest(folder: str) -> dict:
    with open(os.path.join(folder, MANIFEST)) as f:
        return json.load(f)


def write_manifest(folder: str, manifest: dict) -> None:
    path = os.path.join(folder, MANIFEST)
    with open(path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(path + ".tmp", path)


class PseudoLabeledCases:
    """nnU-Net dataset interface (``identifiers``, ``load_case``) over unlabeled cases: the preprocessed image from
    its own folder, the (pseudo-label, confidence) pair and class locations from the pseudo-label folder."""

    def __init__(self, image_folder_of_case: Dict[str, str], pseudo_label_folder_: str):
        self.image_folder_of_case = dict(image_folder_of_case)
        self.folder = pseudo_label_folder_
        self.identifiers = sorted(self.image_folder_of_case)
        blosc2.set_nthreads(1)
        self._mmap = {} if os.name == "nt" else {"mmap_mode": "r"}

    def _open(self, path):
        return blosc2.open(urlpath=path, mode="r", dparams={"nthreads": 1}, **self._mmap)

    def load_case(self, identifier: str):
        image = self._open(os.path.join(self.image_folder_of_case[identifier], identifier + ".b2nd"))
        pair = self._open(os.path.join(self.folder, identifier + PSEUDO_SUFFIX))
        properties = load_pickle(os.path.join(self.folder, identifier + ".pkl"))
        return image, pair, None, properties


class ConfidenceToIgnore(BasicTransform):
    """``segmentation`` (pseudo-label, confidence x 10000) -> the pseudo-label, with ``ignore_label`` wherever the
    confidence is below ``threshold``. Padding (-1, outside the image) stays -1, as nnU-Net's transforms expect."""

    def __init__(self, threshold: float, ignore_label: int):
        super().__init__()
        self.threshold = round(threshold * CONFIDENCE_SCALE)
        self.ignore_label = ignore_label

    def apply(self, data_dict, **params):
        label, conf = data_dict["segmentation"][0:1], data_dict["segmentation"][1:2]
        unconfident = (conf < self.threshold) & (label >= 0)
        data_dict["segmentation"] = torch.where(unconfident, torch.full_like(label, self.ignore_label), label)
        return data_dict
