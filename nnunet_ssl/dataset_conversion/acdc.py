"""ACDC (cine MRI, ED and ES frames; 1 RV, 2 MYO, 3 LV) as an nnU-Net raw dataset with the SSL4MIS protocol.

Input: a folder with SSL4MIS's ``train.list``, ``val.list`` and ``test.list`` (volume ids ``patientXXX_frameYY``;
70 / 10 / 20 patients; ``--lists`` points elsewhere) and either
- the SSL4MIS h5 layout, ``data/`` (slices also in ``data/slices/``): ``patientXXX_frameYY.h5`` volumes shaped
  (slices, H, W) and ``patientXXX_frameYY_slice_N.h5`` 2D slices, N = 1..K, from which volumes without a volume file
  (the training patients) are stacked back exactly. Images are SSL4MIS's min-max scaled ones. The files store no
  geometry: we write 1.5625 x 1.5625 mm in-plane and 10 mm between slices (x, y, z). ACDC's in-plane spacing
  spans 1.37-1.68 mm and 1.5625 mm is a common value; most volumes have 10 mm between slices (some 5 mm). What
  matters for nnU-Net is the ratio, which makes it plan ACDC as the anisotropic data it is (no resampling across
  slices in 3d, 2d on the native in-plane grid). The literature's metrics are in voxels, so they do not depend on it;
- or the original NIfTI layout, ``[training/]patientXXX/patientXXX_frameYY.nii.gz`` + ``..._gt.nii.gz``, geometry from
  the headers. Case ids keep the original frame numbers (e.g. frame01 and frame12); SSL4MIS renamed each patient's
  two frames to frame01/frame02 in ascending order, so the lists are used per patient.

Output ``nnUNet_raw/DatasetXXX_ACDC``, one case per volume: the train.list and val.list patients in
imagesTr/labelsTr and the test.list patients in imagesTs/labelsTs. ``splits_final.json`` has one fold: ``train`` =
the volumes of the first ``--num-labeled`` patients of train.list (3 or 7; SSL4MIS's 68 / 136 slices), ``unlabeled``
= those of the other training patients, ``val`` = the val.list patients' volumes, as SSL4MIS selects checkpoints.
"""
import argparse
import os
import re
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.dataset_conversion.common import (
    add_dataset_arguments, add_standard_split_arguments, build_raw_dataset, check_disjoint, check_label_values,
    check_missing, exit_on_config_error, image_from_array, label_on_image_grid, progress, raw_dataset_path, read_h5,
    read_id_list, read_image, write_case)
from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.splits import fold_from_protocol

LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
H5_SPACING_MM = (1.5625, 1.5625, 10.0)
H5_NAME = re.compile(r"(patient\d{3}_frame\d{2})(?:_slice_(\d+))?\.h5")
NIFTI_NAME = r"{patient}_frame\d{{2}}\.nii(\.gz)?"


class H5Layout:
    """SSL4MIS's ``data/`` folder: volume files, or 2D slices stacked back into volumes."""
    description = (f"SSL4MIS h5 files (min-max scaled images; no geometry stored, {H5_SPACING_MM} mm (x, y, z) "
                   f"written)")

    def __init__(self, input_dir: str):
        self.volume_files: Dict[str, str] = {}
        self.slice_files: Dict[str, Dict[int, str]] = {}
        for folder in (os.path.join(input_dir, "data"), os.path.join(input_dir, "data", "slices")):
            for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                match = H5_NAME.fullmatch(name)
                if match and match.group(2):
                    self.slice_files.setdefault(match.group(1), {})[int(match.group(2))] = os.path.join(folder, name)
                elif match:
                    self.volume_files[match.group(1)] = os.path.join(folder, name)

    def volumes(self, patient: str, listed: List[str]) -> Tuple[List[str], List[str]]:
        """(present, missing) among the listed volume ids of the patient."""
        present = [v for v in listed if v in self.volume_files or v in self.slice_files]
        return present, [v for v in listed if v not in present]

    def load(self, volume_id: str) -> Tuple[sitk.Image, sitk.Image]:
        if volume_id in self.volume_files:
            image, label = read_h5(self.volume_files[volume_id], volume_id)
            if image.ndim != 3:
                raise SSLConfigError(f"{volume_id}: expected a (slices, H, W) volume, got shape {image.shape}")
        else:
            image, label = self._stack_slices(volume_id)
        check_label_values(label, LABELS.values(), volume_id)
        return (image_from_array(image.astype(np.float32), H5_SPACING_MM),
                image_from_array(label.astype(np.uint8), H5_SPACING_MM))

    def _stack_slices(self, volume_id: str) -> Tuple[np.ndarray, np.ndarray]:
        """SSL4MIS wrote slice N from row N-1 of SimpleITK's (z, y, x) array; stacking 1..K restores the volume."""
        files = self.slice_files[volume_id]
        gaps = [n for n in range(1, max(files) + 1) if n not in files]
        if gaps:
            raise SSLConfigError(f"{volume_id}: slice(s) {gaps} missing among slices 1..{max(files)}")
        slices = [read_h5(files[n], f"{volume_id} slice {n}") for n in sorted(files)]
        shapes = sorted({image.shape for image, _ in slices})
        if len(shapes) > 1 or len(shapes[0]) != 2:
            raise SSLConfigError(f"{volume_id}: slices must be 2D of one shape, found shapes {shapes}")
        return np.stack([image for image, _ in slices]), np.stack([label for _, label in slices])


class NiftiLayout:
    """The original ACDC download: one folder per patient with its frames and their ``_gt`` labels."""
    description = "original ACDC NIfTI files (geometry from the headers)"

    def __init__(self, input_dir: str):
        self.input_dir = input_dir
        self.files: Dict[str, Tuple[str, str]] = {}  # volume id -> (image, label)

    def volumes(self, patient: str, listed: List[str]) -> Tuple[List[str], List[str]]:
        """(frames found, [patient] if the patient folder is absent); the listed frame names are not used."""
        folders = [os.path.join(self.input_dir, parent, patient) for parent in ("", "training", "database/training")]
        folder = next((f for f in folders if os.path.isdir(f)), None)
        if folder is None:
            return [], [patient]
        frames = sorted(f for f in os.listdir(folder) if re.fullmatch(NIFTI_NAME.format(patient=patient), f))
        if not frames:
            raise SSLConfigError(f"{patient}: no {patient}_frameYY.nii.gz image in {folder}")
        for frame in frames:
            volume_id, ending = frame.split(".", 1)
            label_file = os.path.join(folder, f"{volume_id}_gt.{ending}")
            if not os.path.isfile(label_file):
                raise SSLConfigError(f"{volume_id}: label {label_file} not found")
            self.files[volume_id] = (os.path.join(folder, frame), label_file)
        return [frame.split(".", 1)[0] for frame in frames], []

    def load(self, volume_id: str) -> Tuple[sitk.Image, sitk.Image]:
        image_file, label_file = self.files[volume_id]
        image, label = read_image(image_file, volume_id), read_image(label_file, volume_id)
        check_label_values(sitk.GetArrayViewFromImage(label), LABELS.values(), volume_id)
        return image, label_on_image_grid(image, sitk.Cast(label, sitk.sitkUInt8), volume_id)


def group_by_patient(volume_ids: List[str], list_file: str) -> Dict[str, List[str]]:
    """Volume ids per patient, patients in order of first appearance."""
    grouped: Dict[str, List[str]] = {}
    for volume_id in volume_ids:
        match = re.fullmatch(r"(patient\d{3})_frame\d{2}", volume_id)
        if not match:
            raise SSLConfigError(f"{list_file}: unexpected id {volume_id!r} (expected patientXXX_frameYY)")
        grouped.setdefault(match.group(1), []).append(volume_id)
    return grouped


def convert_acdc(input_dir: str, dataset_id: int, num_labeled: int = 7, lists_dir: Optional[str] = None,
                 allow_missing: bool = False, overwrite: bool = False) -> str:
    """Convert ACDC into ``nnUNet_raw/DatasetXXX_ACDC`` and return that folder (see the module docstring)."""
    list_files = {name: os.path.join(lists_dir or input_dir, f"{name}.list") for name in ("train", "val", "test")}
    listed = {name: group_by_patient(read_id_list(path), path) for name, path in list_files.items()}
    check_disjoint(**listed)
    patient_fold = fold_from_protocol(list(listed["train"]), num_labeled, val_ids=list(listed["val"]))
    layout = H5Layout(input_dir) if os.path.isdir(os.path.join(input_dir, "data")) else NiftiLayout(input_dir)
    volumes, missing = {}, []
    for patients in listed.values():
        for patient, listed_volumes in patients.items():
            volumes[patient], missing_here = layout.volumes(patient, listed_volumes)
            missing += missing_here
    labeled = set(patient_fold["train"]) | {v for p in patient_fold["train"] for v in listed["train"][p]}
    check_missing(missing, labeled, allow_missing)
    fold = {key: [v for p in patients for v in volumes[p]] for key, patients in patient_fold.items()}
    if not fold["val"]:
        raise SSLConfigError("no val.list volume found in the input: nnU-Net needs a validation set")
    train_ids = fold["train"] + fold["unlabeled"] + fold["val"]
    test_ids = [v for p in listed["test"] for v in volumes[p]]
    with build_raw_dataset(
            dataset_id, "ACDC", train_ids, test_ids, [fold], overwrite,
            channel_names={0: "cineMRI"}, labels=dict(LABELS),
            description=f"ACDC, from the {layout.description}. splits_final.json: the first {num_labeled} patients "
                        f"of train.list labeled, the other training patients unlabeled, val = val.list patients; "
                        f"test.list patients in imagesTs/labelsTs.",
            reference="Bernard et al., IEEE TMI 37(11):2514-2525, 2018",
            license="see the ACDC terms of use", converted_by="nnunet_ssl_convert_acdc") as folder:
        for subset, ids in (("Tr", train_ids), ("Ts", test_ids)):
            for volume_id in progress(ids, f"ACDC images{subset}"):
                write_case(folder, subset, volume_id, *layout.load(volume_id))
    target = raw_dataset_path(dataset_id, "ACDC")
    print(f"{target}: {len(fold['train'])} labeled, {len(fold['unlabeled'])} unlabeled, {len(fold['val'])} val and "
          f"{len(test_ids)} test volumes", file=sys.stderr)
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--input", required=True,
                        help="folder with the lists and data/ (SSL4MIS h5) or the patientXXX folders (NIfTI)")
    add_dataset_arguments(parser)
    add_standard_split_arguments(parser, "patients", "train.list, val.list and test.list", 7, "3 or 7",
                                 "unlabeled, val or test volumes")
    args = parser.parse_args(argv)
    with exit_on_config_error():
        convert_acdc(args.input, args.dataset_id, args.num_labeled, args.lists, args.allow_missing, args.overwrite)


if __name__ == "__main__":
    main()
