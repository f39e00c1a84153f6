"""Helpers shared by the converters: reading list and h5 files, checking and writing cases as NIfTI, and putting a
dataset folder into ``nnUNet_raw`` safely.

Safe replacement: a dataset is built in a hidden staging folder next to its target and moved into place only once
every case is written. A failed run therefore leaves the previous dataset (or nothing) behind, and a rerun with the
same inputs rewrites the dataset cleanly. An existing dataset counts as *different*, and is replaced only with
``overwrite``, when another ``nnUNet_raw`` folder has the same id under another name, or when its dataset.json, its
case ids (imagesTr, imagesTs) or its splits_final.json are not the ones the new run writes.
"""
import argparse
import json
import os
import re
import shutil
import sys
from collections import Counter
from contextlib import contextmanager
from typing import Collection, Dict, Iterator, List, Optional, Sequence, Tuple

import h5py
import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.splits import Fold, write_splits

FILE_ENDING = ".nii.gz"
_GEOMETRY_TOLERANCE = 1e-3  # mm for spacing and origin; cosines for direction


def preview(ids: Sequence[str], limit: int = 5) -> str:
    return ", ".join(ids[:limit]) + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def read_id_list(path: str) -> List[str]:
    """Case ids of a list file, one per line; blank lines are ignored, duplicates are an error."""
    if not os.path.isfile(path):
        raise SSLConfigError(f"list file {path} not found")
    with open(path) as f:
        ids = [line.strip() for line in f if line.strip()]
    if not ids:
        raise SSLConfigError(f"list file {path} is empty")
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise SSLConfigError(f"list file {path} repeats {preview(duplicates)}")
    return ids


def check_disjoint(**named_ids: Collection[str]) -> None:
    """Raise if two of the named id collections (e.g. train=..., test=...) share an id."""
    names = list(named_ids)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            shared = sorted(set(named_ids[first]) & set(named_ids[second]))
            if shared:
                raise SSLConfigError(f"the {first} and {second} lists share {preview(shared)}")


def check_missing(missing: Sequence[str], labeled: Collection[str], allow_missing: bool) -> None:
    """Listed cases without files are an error unless ``allow_missing`` (partial copies), in which case they are
    reported and skipped. A missing labeled case is always an error: the protocol's labeled set would change."""
    if not missing:
        return
    missing_labeled = [case for case in missing if case in labeled]
    if missing_labeled:
        raise SSLConfigError(f"labeled case(s) not found in the input: {preview(missing_labeled)}")
    if not allow_missing:
        raise SSLConfigError(f"{len(missing)} listed case(s) not found in the input: {preview(list(missing))}. "
                             f"Pass --allow-missing to convert only the cases present.")
    print(f"warning: {len(missing)} listed case(s) not found, skipped: {', '.join(missing)}", file=sys.stderr)


def read_h5(path: str, case: str) -> Tuple[np.ndarray, np.ndarray]:
    """The ``image`` and ``label`` arrays of an h5 file, checked to have the same shape."""
    try:
        with h5py.File(path, "r") as f:
            absent = [key for key in ("image", "label") if key not in f]
            if absent:
                raise SSLConfigError(f"{case}: {path} has no '{absent[0]}' dataset (expected 'image' and 'label')")
            image, label = f["image"][()], f["label"][()]
    except OSError as e:
        raise SSLConfigError(f"{case}: cannot read {path} ({e})") from e
    if image.shape != label.shape:
        raise SSLConfigError(f"{case}: image shape {image.shape} and label shape {label.shape} differ in {path}")
    return image, label


def check_label_values(label: np.ndarray, allowed: Collection[int], case: str) -> None:
    unexpected = [v for v in np.unique(label).tolist() if v not in allowed]
    if unexpected:
        raise SSLConfigError(f"{case}: label values {unexpected[:10]} outside the expected {sorted(allowed)}")


def image_from_array(array_zyx: np.ndarray, spacing_xyz: Sequence[float]) -> sitk.Image:
    """A SimpleITK image from a numpy array in SimpleITK's (z, y, x) order, identity direction, origin 0."""
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing([float(s) for s in spacing_xyz])
    return image


def read_image(path: str, case: str) -> sitk.Image:
    try:
        return sitk.ReadImage(path)
    except RuntimeError as e:
        raise SSLConfigError(f"{case}: cannot read {path} ({str(e).strip().splitlines()[-1]})") from e


def label_on_image_grid(image: sitk.Image, label: sitk.Image, case: str) -> sitk.Image:
    """The label with the image's exact geometry, after checking that both share size, spacing, origin and
    direction (up to rounding, which nnU-Net's integrity check would otherwise reject)."""
    if image.GetSize() != label.GetSize():
        raise SSLConfigError(f"{case}: image size {image.GetSize()} and label size {label.GetSize()} differ")
    for what in ("Spacing", "Origin", "Direction"):
        image_value, label_value = getattr(image, f"Get{what}")(), getattr(label, f"Get{what}")()
        if not np.allclose(image_value, label_value, rtol=0, atol=_GEOMETRY_TOLERANCE):
            raise SSLConfigError(f"{case}: image and label {what.lower()} differ ({image_value} vs {label_value})")
    label.CopyInformation(image)
    return label


def write_case(dataset_folder: str, subset: str, case_id: str, image: sitk.Image, label: sitk.Image) -> None:
    """Write one single-channel case; ``subset`` is "Tr" or "Ts"."""
    write_channels(dataset_folder, f"images{subset}", case_id, [image])
    sitk.WriteImage(label, os.path.join(dataset_folder, f"labels{subset}", f"{case_id}{FILE_ENDING}"))


def write_channels(dataset_folder: str, images_folder: str, case_id: str, channels: Sequence[sitk.Image]) -> None:
    """Write a case's channels as ``<case_id>_0000.nii.gz``, ``_0001`` ... into ``images_folder``."""
    for index, channel in enumerate(channels):
        sitk.WriteImage(channel, os.path.join(dataset_folder, images_folder, f"{case_id}_{index:04d}{FILE_ENDING}"))


def progress(items: Sequence, description: str) -> tqdm:
    """A progress bar on stderr over the cases; none for an empty list."""
    return tqdm(items, desc=description, unit="case", file=sys.stderr, disable=not items)


def raw_root() -> str:
    from nnunetv2.paths import nnUNet_raw

    if not nnUNet_raw.is_set():
        raise SSLConfigError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw "
                             "(see nnU-Net's documentation/setting_up_paths.md)")
    return nnUNet_raw.get()


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= dataset_id <= 999:
        raise SSLConfigError(f"dataset id must be between 1 and 999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise SSLConfigError(f"dataset name {name!r} must consist of letters, digits, '_' and '-'")
    return f"Dataset{dataset_id:03d}_{name}"


def raw_dataset_path(dataset_id: int, name: str) -> str:
    return os.path.join(raw_root(), dataset_folder_name(dataset_id, name))


@contextmanager
def build_raw_dataset(dataset_id: int, name: str, train_ids: Sequence[str], test_ids: Sequence[str],
                      splits: Optional[List[Fold]], overwrite: bool, unlabeled_ids: Sequence[str] = (),
                      file_ending: str = FILE_ENDING, **dataset_json) -> Iterator[str]:
    """Yield a staging folder holding dataset.json (``dataset_json`` are generate_dataset_json's arguments),
    splits_final.json (unless ``splits`` is None) and empty images/labels folders, for the caller to fill with
    ``train_ids`` (Tr), ``test_ids`` (Ts) and ``unlabeled_ids`` (imagesUnlabeled). When the block ends without
    error the staging folder replaces ``nnUNet_raw/DatasetXXX_name``; see the module docstring for when that needs
    ``overwrite``."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    target = raw_dataset_path(dataset_id, name)
    raw, folder_name = os.path.split(target)
    replaced_names = _other_names_for_id(dataset_id, folder_name, overwrite)
    stage = os.path.join(raw, f".{folder_name}.partial")  # the dot hides it from nnU-Net's id lookup
    shutil.rmtree(stage, ignore_errors=True)
    try:
        subfolders = (["imagesTr", "labelsTr"] + (["imagesTs", "labelsTs"] if test_ids else [])
                      + (["imagesUnlabeled"] if unlabeled_ids else []))
        for subfolder in subfolders:
            os.makedirs(os.path.join(stage, subfolder))
        generate_dataset_json(stage, num_training_cases=len(train_ids), file_ending=file_ending,
                              dataset_name=folder_name, **dataset_json)
        if splits is not None:
            write_splits(os.path.join(stage, "splits_final.json"), splits)
        cases = {"imagesTr": train_ids, "imagesTs": test_ids, "imagesUnlabeled": unlabeled_ids}
        difference = _difference(target, stage, cases, file_ending) if os.path.isdir(target) else ""
        if difference and not overwrite:
            raise SSLConfigError(f"{target} already holds a different dataset ({difference}). "
                                 f"Pass --overwrite to replace it.")
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    for old in [folder_name] + replaced_names:
        shutil.rmtree(os.path.join(raw, old), ignore_errors=True)
    os.rename(stage, target)
    if difference or replaced_names:
        _note_stale_preprocessed(folder_name)


def _other_names_for_id(dataset_id: int, folder_name: str, overwrite: bool) -> List[str]:
    """Other dataset folders with this id in nnUNet_raw, which ``overwrite`` lets us replace. One in
    nnUNet_preprocessed or nnUNet_results would make nnU-Net's id lookup ambiguous, and we never delete those."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets

    others = [str(n) for n in find_candidate_datasets(dataset_id) if n != folder_name]
    blocking = [n for n in others for root in (nnUNet_preprocessed, nnUNet_results)
                if root.is_set() and os.path.isdir(os.path.join(root.get(), n))]
    if blocking:
        raise SSLConfigError(f"dataset id {dataset_id} is already used by {', '.join(sorted(set(blocking)))} in "
                             f"nnUNet_preprocessed or nnUNet_results: choose another id or remove those folders")
    in_raw = [n for n in others if os.path.isdir(os.path.join(raw_root(), n))]
    if in_raw and not overwrite:
        raise SSLConfigError(f"dataset id {dataset_id} is already used by {', '.join(in_raw)} in nnUNet_raw. "
                             f"Pass --overwrite to replace it, or choose another id.")
    return in_raw


def _difference(existing: str, new: str, cases: Dict[str, Sequence[str]], file_ending: str) -> str:
    """Why the existing dataset folder differs from the staged one (whose image folders will hold ``cases``),
    or "" when it does not."""
    reasons = []
    if _json_or_none(os.path.join(existing, "dataset.json")) != _json_or_none(os.path.join(new, "dataset.json")):
        reasons.append("another dataset.json")
    for images_folder, ids in cases.items():
        if _case_ids(os.path.join(existing, images_folder), file_ending) != set(ids):
            reasons.append(f"other cases in {images_folder}")
    if (_json_or_none(os.path.join(existing, "splits_final.json"))
            != _json_or_none(os.path.join(new, "splits_final.json"))):
        reasons.append("another splits_final.json")
    return ", ".join(reasons)


def _json_or_none(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _case_ids(images_folder: str, file_ending: str) -> set:
    suffix = f"_0000{file_ending}"
    if not os.path.isdir(images_folder):
        return set()
    return {f[:-len(suffix)] for f in os.listdir(images_folder) if f.endswith(suffix)}


def _note_stale_preprocessed(folder_name: str) -> None:
    from nnunetv2.paths import nnUNet_preprocessed

    if nnUNet_preprocessed.is_set() and os.path.isdir(os.path.join(nnUNet_preprocessed.get(), folder_name)):
        print(f"note: {os.path.join(nnUNet_preprocessed.get(), folder_name)} was made from the replaced dataset; "
              f"delete it and rerun nnUNetv2_plan_and_preprocess", file=sys.stderr)


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset-id", type=int, required=True,
                        help="nnU-Net dataset id (1-999); the dataset is written to $nnUNet_raw/DatasetXXX_<name>")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset with this id even if it differs (other name, cases, "
                             "dataset.json or split)")


def add_standard_split_arguments(parser: argparse.ArgumentParser, unit: str, lists: str, num_labeled: int,
                                 literature: str, skipped: str) -> None:
    """The options of a converter that writes the field's standard split: how many ``unit``s are labeled, where
    the ``lists`` are, and whether listed ``skipped`` volumes without files may be left out."""
    parser.add_argument("--num-labeled", type=int, default=num_labeled,
                        help=f"labeled {unit}: the first N of train.list ({literature} in the literature; "
                             f"default {num_labeled})")
    parser.add_argument("--lists", help=f"folder with {lists} (default: the input folder)")
    parser.add_argument("--allow-missing", action="store_true",
                        help=f"skip listed {skipped} that have no files (e.g. a partial copy)")


@contextmanager
def exit_on_config_error() -> Iterator[None]:
    """For command-line ``main()``: print an SSLConfigError as ``error: <message>`` and exit with status 1."""
    try:
        yield
    except SSLConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
