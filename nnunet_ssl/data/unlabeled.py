"""Where unlabeled cases come from, and a dataset that reads their images only.

Two sources, used together when both are present:

* real unlabeled scans, preprocessed by ``nnunet_ssl_preprocess_unlabeled`` into
  ``nnUNet_preprocessed/<Dataset>/<data_identifier>_unlabeled/``;
* benchmark splits: the ``"unlabeled"`` list of the fold in ``splits_final.json``, whose cases live in the labeled
  preprocessed folder. Their label files are never opened (they may be deleted).
"""
import os
from typing import Dict, List, Sequence

import blosc2

from nnunet_ssl.errors import SSLConfigError

UNLABELED_FOLDER_SUFFIX = "_unlabeled"
HOW_TO_ADD_UNLABELED = (
    "Add unlabeled data in one of two ways:\n"
    "  1. put scans into $nnUNet_raw/<Dataset>/imagesUnlabeled/ (named like imagesTr: case_0000.nii.gz, ...) and run\n"
    "     nnunet_ssl_preprocess_unlabeled -d <Dataset> -c <configuration>\n"
    "  2. or mark labeled cases as unlabeled for a benchmark with\n"
    "     nnunet_ssl_split -d <Dataset> --num-labeled N   (or --fraction F)")


def unlabeled_folder(preprocessed_dataset_folder: str) -> str:
    """``.../nnUNetPlans_3d_fullres`` -> ``.../nnUNetPlans_3d_fullres_unlabeled``."""
    return preprocessed_dataset_folder.rstrip(os.sep) + UNLABELED_FOLDER_SUFFIX


def case_ids_in(folder: str) -> List[str]:
    """Case ids of the preprocessed images (``<id>.b2nd``, not ``<id>_seg.b2nd``) in ``folder``."""
    if not os.path.isdir(folder):
        return []
    return sorted(f[:-len(".b2nd")] for f in os.listdir(folder) if f.endswith(".b2nd") and not f.endswith("_seg.b2nd"))


def collect_unlabeled_cases(preprocessed_dataset_folder: str, split_unlabeled: Sequence[str],
                            labeled_ids: Sequence[str], preprocess_command: str = "") -> Dict[str, str]:
    """Map every unlabeled case id to the folder holding its image; raise if there is none or ids clash.
    ``preprocess_command`` is what the error advises when raw scans wait in imagesUnlabeled/."""
    cases = {}
    for case in split_unlabeled:
        if not os.path.isfile(os.path.join(preprocessed_dataset_folder, case + ".b2nd")):
            raise SSLConfigError(f"unlabeled case '{case}' of splits_final.json has no preprocessed image "
                                 f"{case}.b2nd in {preprocessed_dataset_folder}")
        cases[case] = preprocessed_dataset_folder
    folder = unlabeled_folder(preprocessed_dataset_folder)
    for case in case_ids_in(folder):
        if case in cases or case in labeled_ids:
            raise SSLConfigError(f"unlabeled scan '{case}' in {folder} has the id of a labeled or split-unlabeled "
                                 f"case. Rename it in imagesUnlabeled/ and preprocess again.")
        cases[case] = folder
    if not cases:
        message = (f"no unlabeled data found for {preprocessed_dataset_folder}: neither the folder {folder} nor an "
                   f"'unlabeled' list in splits_final.json for this fold. A semi-supervised trainer does not fall "
                   f"back to supervised training.\n")
        raw_scans = _raw_unlabeled_scans(preprocessed_dataset_folder)
        if raw_scans:
            message += (f"{len(raw_scans)} scan file(s) wait in {os.path.dirname(raw_scans[0])} but are not "
                        f"preprocessed for this configuration. Run\n  "
                        f"{preprocess_command or 'nnunet_ssl_preprocess_unlabeled -d <Dataset> -c <configuration>'}")
        else:
            message += HOW_TO_ADD_UNLABELED
        raise SSLConfigError(message)
    return cases


def _raw_unlabeled_scans(preprocessed_dataset_folder: str) -> List[str]:
    """Files in ``$nnUNet_raw/<Dataset>/imagesUnlabeled`` for the dataset of a preprocessed folder."""
    from nnunetv2.paths import nnUNet_raw

    if not nnUNet_raw.is_set():
        return []
    dataset_name = os.path.basename(os.path.dirname(preprocessed_dataset_folder.rstrip(os.sep)))
    images = os.path.join(nnUNet_raw.get(), dataset_name, "imagesUnlabeled")
    if not os.path.isdir(images):
        return []
    return sorted(os.path.join(images, f) for f in os.listdir(images) if not f.startswith("."))


class UnlabeledImages:
    """Reads the preprocessed image of an unlabeled case, never its segmentation, and no properties."""

    def __init__(self, folder_of_case: Dict[str, str]):
        self.folder_of_case = dict(folder_of_case)
        self.identifiers = sorted(self.folder_of_case)
        blosc2.set_nthreads(1)
        self._mmap = {} if os.name == "nt" else {"mmap_mode": "r"}

    def load_image(self, identifier: str):
        path = os.path.join(self.folder_of_case[identifier], identifier + ".b2nd")
        return blosc2.open(urlpath=path, mode="r", dparams={"nthreads": 1}, **self._mmap)
