"""Any folder of labeled images as an nnU-Net raw dataset, e.g. MSD Hippocampus (TrainingSet/images + labels).

Images and labels share file names; each pair becomes imagesTr/<id>_0000.nii.gz and labelsTr/<id>.nii.gz. Files are
read and rewritten with SimpleITK, so any single-channel format it reads works, and each label gets its image's
geometry after a check that the two match. Label names come from ``--labels`` or default to label_1 .. label_K, K
the largest value found in the labels. No split is written: make the semi-supervised split with
``nnunet_ssl_split --raw`` and plan with ``nnunet_ssl_plan_and_preprocess`` (which never reads the unlabeled cases'
labels), or split after nnUNetv2_plan_and_preprocess with ``nnunet_ssl_split``.
"""
import argparse
import sys
from typing import Dict, Iterable, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.dataset_conversion.common import (
    add_dataset_arguments, build_raw_dataset, check_label_values, exit_on_config_error, label_on_image_grid,
    preview, progress, raw_dataset_path, read_image, write_case)
from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.image_files import IMAGE_ENDINGS, case_files



def parse_labels(text: str) -> Dict[str, int]:
    """``background=0,anterior=1,...`` -> {"background": 0, "anterior": 1, ...}; values must be 0..K."""
    labels = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if not name.strip() or not value.strip().isdigit():
            raise SSLConfigError(f"--labels: expected name=value pairs like background=0,tumor=1, got {item!r}")
        labels[name.strip()] = int(value)
    if sorted(labels.values()) != list(range(len(labels))):
        raise SSLConfigError(f"--labels: values must be 0, 1, ..., K once each (0 = background), got {labels}")
    return labels


def largest_label(path: str, case_id: str) -> int:
    label = read_image(path, case_id)  # kept alive while its array view is read
    values = np.unique(sitk.GetArrayViewFromImage(label))
    if values.min() < 0 or not np.all(values == np.round(values)):
        raise SSLConfigError(f"{case_id}: label values must be non-negative integers, found {values[:10].tolist()}")
    return int(values.max())


def load_pair(image_path: str, label_path: str, case_id: str, allowed: Iterable[int]) -> Tuple[sitk.Image, sitk.Image]:
    allowed = set(allowed)
    image = read_image(image_path, case_id)
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() not in (2, 3):
        raise SSLConfigError(f"{case_id}: {image_path} is not a single-channel 2D or 3D image")
    label = read_image(label_path, case_id)
    check_label_values(sitk.GetArrayViewFromImage(label), allowed, case_id)
    label = sitk.Cast(label, sitk.sitkUInt8 if max(allowed) < 256 else sitk.sitkUInt16)
    return image, label_on_image_grid(image, label, case_id)


def convert_labeled_folder(images_dir: str, labels_dir: str, dataset_id: int, name: str, modality: str = "MRI",
                           labels: Optional[Dict[str, int]] = None, overwrite: bool = False) -> str:
    """Convert the image/label pairs into ``nnUNet_raw/DatasetXXX_<name>`` and return that folder."""
    images, label_files = case_files(images_dir), case_files(labels_dir)
    unpaired = sorted(set(images) ^ set(label_files))
    if unpaired:
        raise SSLConfigError(f"image and label folders must hold the same file names; unpaired: {preview(unpaired)}")
    if not images:
        raise SSLConfigError(f"no image files ({', '.join(IMAGE_ENDINGS)}) in {images_dir}")
    case_ids = sorted(images)
    if labels is None:
        largest = max(largest_label(label_files[c], c) for c in progress(case_ids, "reading label values"))
        labels = {"background": 0, **{f"label_{k}": k for k in range(1, largest + 1)}}
    with build_raw_dataset(dataset_id, name, case_ids, [], None, overwrite,
                           channel_names={0: modality}, labels=dict(labels),
                           license="not recorded (see the data's source)",
                           converted_by="nnunet_ssl_convert_folder") as folder:
        for case_id in progress(case_ids, f"{name} imagesTr"):
            write_case(folder, "Tr", case_id, *load_pair(images[case_id], label_files[case_id], case_id,
                                                         labels.values()))
    target = raw_dataset_path(dataset_id, name)
    print(f"{target}: {len(case_ids)} training cases, labels {labels}", file=sys.stderr)
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--images", required=True, help="folder of images")
    parser.add_argument("-l", "--labels-dir", required=True, help="folder of labels with the images' file names")
    add_dataset_arguments(parser)
    parser.add_argument("-n", "--name", required=True, help="dataset name: the folder becomes DatasetXXX_<name>")
    parser.add_argument("--modality", default="MRI",
                        help="channel name for dataset.json; 'CT' selects nnU-Net's CT normalisation (default MRI)")
    parser.add_argument("--labels", help="label names and values, e.g. background=0,anterior=1,posterior=2 "
                                         "(default: label_1..label_K from the data)")
    args = parser.parse_args(argv)
    with exit_on_config_error():
        labels = parse_labels(args.labels) if args.labels else None
        convert_labeled_folder(args.images, args.labels_dir, args.dataset_id, args.name, args.modality, labels,
                               args.overwrite)


if __name__ == "__main__":
    main()
