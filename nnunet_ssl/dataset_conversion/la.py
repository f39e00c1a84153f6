"""2018 Atrial Segmentation Challenge (LA) as an nnU-Net raw dataset with the UA-MT semi-supervised protocol.

Input: a folder with ``train.list`` and ``test.list`` (UA-MT's 80 / 20 ids; ``--lists`` points elsewhere) and one
folder per case, ``<id>/``, directly inside it or inside ``2018LA_Seg_Training Set/`` or ``Training Set/``, holding
either
- ``mri_norm2.h5`` (UA-MT's release: z-scored, cropped around the atrium in x/y, arrays in (x, y, z) order). The
  files store no geometry: we write 0.625 mm isotropic, the challenge's acquisition resolution, with identity
  direction and origin 0; or
- ``lgemri.nrrd`` + ``laendo.nrrd`` (the challenge's files, label 255 -> 1); geometry from the nrrd headers.
All cases must come in the same format: the two differ in crop, intensities and spacing.

Output ``nnUNet_raw/DatasetXXX_LA``: the train.list cases in imagesTr/labelsTr and the test.list cases in
imagesTs/labelsTs, so they never enter a fold. ``splits_final.json`` has one fold: ``train`` = the first
``--num-labeled`` ids of train.list (8 = 10 %, 16 = 20 % in the literature), ``unlabeled`` = the other training
ids. The protocol has no validation set, so ``val`` = the labeled ids (nnU-Net's fold-"all" convention): the test
set never picks a checkpoint, checkpoint_best is chosen on training cases and means little, and checkpoint_final
is the one to evaluate, as the literature evaluates a fixed final iteration.
"""
import argparse
import os
import sys
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.dataset_conversion.common import (
    add_dataset_arguments, add_standard_split_arguments, build_raw_dataset, check_disjoint, check_label_values,
    check_missing, exit_on_config_error, image_from_array, label_on_image_grid, progress, raw_dataset_path, read_h5,
    read_id_list, read_image, write_case)
from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.splits import fold_from_protocol

H5_SPACING_MM = (0.625, 0.625, 0.625)
CASE_PARENTS = ("2018LA_Seg_Training Set", "Training Set", "")
H5_FILE, NRRD_IMAGE, NRRD_LABEL = "mri_norm2.h5", "lgemri.nrrd", "laendo.nrrd"


def find_case(input_dir: str, case_id: str) -> Optional[Tuple[str, str]]:
    """("h5" or "nrrd", case folder), or None when no folder for the case exists."""
    for parent in CASE_PARENTS:
        folder = os.path.join(input_dir, parent, case_id)
        if not os.path.isdir(folder):
            continue
        if os.path.isfile(os.path.join(folder, H5_FILE)):
            return "h5", folder
        if os.path.isfile(os.path.join(folder, NRRD_IMAGE)):
            if not os.path.isfile(os.path.join(folder, NRRD_LABEL)):
                raise SSLConfigError(f"{case_id}: {folder} has {NRRD_IMAGE} but no {NRRD_LABEL}")
            return "nrrd", folder
        raise SSLConfigError(f"{case_id}: {folder} holds neither {H5_FILE} nor {NRRD_IMAGE} + {NRRD_LABEL}")
    return None


def load_h5_case(folder: str, case_id: str) -> Tuple[sitk.Image, sitk.Image]:
    image, label = read_h5(os.path.join(folder, H5_FILE), case_id)
    if image.ndim != 3:
        raise SSLConfigError(f"{case_id}: expected a 3D image in {H5_FILE}, got shape {image.shape}")
    check_label_values(label, {0, 1}, case_id)
    to_zyx = (2, 1, 0)  # UA-MT stores pynrrd's (x, y, z) arrays; SimpleITK wants (z, y, x)
    return (image_from_array(image.astype(np.float32).transpose(to_zyx), H5_SPACING_MM),
            image_from_array(label.astype(np.uint8).transpose(to_zyx), H5_SPACING_MM))


def load_nrrd_case(folder: str, case_id: str) -> Tuple[sitk.Image, sitk.Image]:
    image = read_image(os.path.join(folder, NRRD_IMAGE), case_id)
    label_255 = read_image(os.path.join(folder, NRRD_LABEL), case_id)
    values = sitk.GetArrayViewFromImage(label_255)
    check_label_values(values, {0, 255}, case_id)
    label = sitk.GetImageFromArray((values == 255).astype(np.uint8))
    label.CopyInformation(label_255)
    return image, label_on_image_grid(image, label, case_id)


SOURCES = {
    "h5": (load_h5_case, f"UA-MT h5 release ({H5_FILE}: cropped in x/y, z-scored; no geometry stored, "
                         f"{H5_SPACING_MM[0]} mm isotropic written)"),
    "nrrd": (load_nrrd_case, "challenge nrrd files (lgemri/laendo, label 255 -> 1; geometry from the headers)"),
}


def convert_la(input_dir: str, dataset_id: int, num_labeled: int = 8, lists_dir: Optional[str] = None,
               allow_missing: bool = False, overwrite: bool = False) -> str:
    """Convert LA into ``nnUNet_raw/DatasetXXX_LA`` and return that folder (see the module docstring)."""
    lists_dir = lists_dir or input_dir
    train_ids = read_id_list(os.path.join(lists_dir, "train.list"))
    test_ids = read_id_list(os.path.join(lists_dir, "test.list"))
    check_disjoint(train=train_ids, test=test_ids)
    fold = fold_from_protocol(train_ids, num_labeled, val_ids=train_ids[:num_labeled])
    found = {case_id: find_case(input_dir, case_id) for case_id in train_ids + test_ids}
    check_missing([c for c, where in found.items() if where is None], fold["train"], allow_missing)
    formats = {where[0]: case_id for case_id, where in found.items() if where is not None}
    if len(formats) > 1:
        raise SSLConfigError(f"cases come in both formats ({formats['h5']} as {H5_FILE}, {formats['nrrd']} as "
                             f"nrrd): convert one format at a time")
    load_case, source = SOURCES[next(iter(formats))]
    train_ids, test_ids = [c for c in train_ids if found[c]], [c for c in test_ids if found[c]]
    fold["unlabeled"] = [c for c in fold["unlabeled"] if found[c]]
    with build_raw_dataset(
            dataset_id, "LA", train_ids, test_ids, [fold], overwrite,
            channel_names={0: "MRI"}, labels={"background": 0, "left_atrium": 1},
            description=f"2018 Atrial Segmentation Challenge, from the {source}. splits_final.json: the first "
                        f"{num_labeled} ids of train.list labeled (val = labeled), the other training ids "
                        f"unlabeled; test.list cases in imagesTs/labelsTs.",
            reference="Xiong et al., Medical Image Analysis 67, 2021 (doi:10.1016/j.media.2020.101832)",
            license="see the challenge's terms of use", converted_by="nnunet_ssl_convert_la") as folder:
        for subset, ids in (("Tr", train_ids), ("Ts", test_ids)):
            for case_id in progress(ids, f"LA images{subset}"):
                write_case(folder, subset, case_id, *load_case(found[case_id][1], case_id))
    target = raw_dataset_path(dataset_id, "LA")
    print(f"{target}: {len(train_ids)} training cases ({num_labeled} labeled, {len(fold['unlabeled'])} unlabeled), "
          f"{len(test_ids)} test cases", file=sys.stderr)
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--input", required=True,
                        help="folder with train.list, test.list and the case folders (UA-MT's data/ folder)")
    add_dataset_arguments(parser)
    add_standard_split_arguments(parser, "cases", "train.list and test.list", 8, "8 or 16",
                                 "unlabeled or test cases")
    args = parser.parse_args(argv)
    with exit_on_config_error():
        convert_la(args.input, args.dataset_id, args.num_labeled, args.lists, args.allow_missing, args.overwrite)


if __name__ == "__main__":
    main()
