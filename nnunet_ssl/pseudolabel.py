"""``nnunet_ssl_pseudolabel``: a trained model (the teacher) predicts every unlabeled case of a dataset, and the
pseudo-labels are stored where ``nnUNetTrainerPseudoLabel`` finds them.

Unlabeled cases are those of the preprocessed ``imagesUnlabeled`` folder (``nnunet_ssl_preprocess_unlabeled``)
and the ``unlabeled`` list of the student's fold in ``splits_final.json``, read from their preprocessed images
(their labels are never opened). Prediction runs on the preprocessed images with nnU-Net's predictor (sliding
window, test-time mirroring unless ``--disable_tta``, the mean of the folds' logits when several are given), so the
pseudo-labels are in the preprocessed space of the plans and configuration and need no re-preprocessing. See
:mod:`nnunet_ssl.data.pseudo_labels` for the files. Existing pseudo-labels of the same teacher are kept (a stopped
run resumes); ``--overwrite`` makes all of them again.
"""
import argparse
import datetime
import os
import shutil
import sys
import time
from typing import List, Optional, Sequence

import numpy as np

from nnunet_ssl.data.pseudo_labels import (MANIFEST, cases_done, pseudo_label_folder, read_manifest,
                                           write_manifest)
from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.preprocess_unlabeled import resolve_dataset

STUDENT_TRAINER = "nnUNetTrainerPseudoLabel"


def dataset_folders(dataset: str, plans: str, configuration: str):
    """(dataset name, preprocessed dataset folder, plans dict) with errors naming what is missing."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    dataset_name = resolve_dataset(dataset, "nnUNet_preprocessed", "nnUNet_results")
    base = os.path.join(os.environ["nnUNet_preprocessed"], dataset_name)
    plans_file = os.path.join(base, plans + ".json")
    if not os.path.isfile(plans_file):
        raise SSLConfigError(f"no plans file {plans_file}. Run nnUNetv2_plan_and_preprocess -d {dataset} first "
                             f"(or pass the plans identifier with -p).")
    plans_dict = load_json(plans_file)
    if configuration not in plans_dict["configurations"]:
        raise SSLConfigError(f"configuration '{configuration}' is not in {plans_file}; available: "
                             f"{', '.join(plans_dict['configurations'])}")
    return dataset_name, base, plans_dict


def checkpoint_files(model_folder: str, folds: Sequence, checkpoint: str, train_command: str) -> List[str]:
    if not os.path.isdir(model_folder):
        raise SSLConfigError(f"no trained model in {model_folder}. Train the teacher first: {train_command}")
    files = []
    for fold in folds:
        path = os.path.join(model_folder, f"fold_{fold}", checkpoint)
        if not os.path.isfile(path):
            present = sorted(f for f in os.listdir(model_folder) if f.startswith("fold_"))
            raise SSLConfigError(f"no checkpoint {path} (fold {fold}, -chk {checkpoint}); the model folder has "
                                 f"{', '.join(present) or 'no fold'}. Train it with {train_command}, or pick the "
                                 f"folds and checkpoint with -f and -chk.")
        files.append(path)
    return files


PREPROCESSING_KEYS = ("data_identifier", "preprocessor_name", "spacing", "normalization_schemes", "use_mask_for_norm",
                      "resampling_fn_data", "resampling_fn_data_kwargs")


def preprocessing(plans: dict, configuration: str) -> dict:
    """What decides a configuration's preprocessed images (not its batch or patch size, which a trainer variant may
    change in the plans it saves)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    resolved = PlansManager(plans).get_configuration(configuration).configuration
    return {"transpose_forward": plans.get("transpose_forward"),
            "intensity_properties": plans.get("foreground_intensity_properties_per_channel"),
            **{key: resolved.get(key) for key in PREPROCESSING_KEYS}}


def check_model_fits_dataset(model_folder: str, dataset_name: str, base: str, plans: str, plans_dict: dict,
                             configuration: str) -> None:
    """The teacher must have been trained on this dataset, these plans and this configuration's preprocessing."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    model_plans_file = os.path.join(model_folder, "plans.json")
    model_plans = load_json(model_plans_file)
    if model_plans.get("dataset_name") != dataset_name or model_plans.get("plans_name") != plans:
        raise SSLConfigError(f"{model_plans_file} is for dataset {model_plans.get('dataset_name')}, plans "
                             f"{model_plans.get('plans_name')}, not {dataset_name}, {plans}")
    if configuration not in model_plans["configurations"] or \
            preprocessing(model_plans, configuration) != preprocessing(plans_dict, configuration):
        raise SSLConfigError(f"the teacher was trained with another '{configuration}' preprocessing than "
                             f"{os.path.join(base, plans + '.json')} now holds (compare {model_plans_file}); its "
                             f"predictions would not fit the preprocessed images")
    model_labels = load_json(os.path.join(model_folder, "dataset.json"))["labels"]
    if model_labels != load_json(os.path.join(base, "dataset.json"))["labels"]:
        raise SSLConfigError(f"the labels of {os.path.join(model_folder, 'dataset.json')} differ from those of "
                             f"{os.path.join(base, 'dataset.json')}")


def unlabeled_cases_of_fold(base: str, preprocessed_folder: str, student_fold):
    """(unlabeled case -> image folder, the fold's train/val lists or None) for the student's fold."""
    from nnunet_ssl.data.unlabeled import case_ids_in, collect_unlabeled_cases
    from nnunet_ssl.splits import check_fold, read_splits

    splits_file = os.path.join(base, "splits_final.json")
    fold = None
    if os.path.isfile(splits_file):
        splits = read_splits(splits_file)
        if student_fold == "all":
            if any(f.get("unlabeled") for f in splits):
                raise SSLConfigError(f"a student of fold 'all' would train on every case, but {splits_file} marks "
                                     f"cases unlabeled; make pseudo-labels for one of its folds (-student_fold)")
        elif student_fold < len(splits):
            fold = splits[student_fold]
            check_fold(fold, f"{splits_file}, fold {student_fold}")
        elif any("unlabeled" in f for f in splits):
            raise SSLConfigError(f"fold {student_fold} is not in {splits_file} ({len(splits)} fold(s))")
    split_unlabeled = list(fold.get("unlabeled", [])) if fold else []
    labeled = [c for c in case_ids_in(preprocessed_folder) if c not in set(split_unlabeled)]
    cases = collect_unlabeled_cases(preprocessed_folder, split_unlabeled, labeled)
    split = {"train": sorted(fold["train"]), "val": sorted(fold["val"])} if fold else None
    return cases, split


def teacher_record(trainer: str, plans: str, configuration: str, folds, checkpoint: str, model_folder: str,
                   files: List[str], use_mirroring: bool) -> dict:
    """What identifies the teacher; the checkpoints' modification times tell a retrained teacher apart."""
    return {"trainer": trainer, "plans": plans, "configuration": configuration, "folds": list(folds),
            "checkpoint": checkpoint, "model_folder": model_folder, "test_time_mirroring": use_mirroring,
            "checkpoint_modified": [datetime.datetime.fromtimestamp(os.path.getmtime(f)).isoformat() for f in files]}


def prepare_output(folder: str, manifest: dict, overwrite: bool) -> None:
    """Empty ``folder`` if asked; otherwise keep it only if its pseudo-labels come from the same teacher."""
    if os.path.isdir(folder) and overwrite:
        shutil.rmtree(folder)
    if os.path.isfile(os.path.join(folder, MANIFEST)):
        old = read_manifest(folder)
        if old.get("teacher") != manifest["teacher"] or old.get("split") != manifest["split"]:
            teacher = old.get("teacher", {})
            raise SSLConfigError(f"{os.path.join(folder, MANIFEST)} names another teacher or split "
                                 f"({teacher.get('trainer')}, folds {teacher.get('folds')}). Pass --overwrite to "
                                 f"replace its pseudo-labels.")
        manifest["created"] = old.get("created", manifest["created"])
    os.makedirs(folder, exist_ok=True)
    write_manifest(folder, manifest)


def export_pseudo_label(case: str, logits, outside_mask, label_manager, patch_size, folder: str) -> None:
    """Teacher logits -> pseudo-label, confidence and class locations on disk (in an export worker). Voxels of
    ``outside_mask`` (outside the nonzero mask, where the plans normalise within it; or None) get nnU-Net's -1,
    as in its preprocessed labels, so that its masking after augmentation treats pseudo-labeled patches alike."""
    from nnunet_ssl.data.pseudo_labels import confidence, save_pseudo_label
    from nnunet_ssl.nnunet_internals import foreground_locations

    probabilities = label_manager.apply_inference_nonlin(logits)
    segmentation = label_manager.convert_probabilities_to_segmentation(probabilities).numpy().astype(np.int16)
    if outside_mask is not None:
        segmentation[outside_mask] = -1
    save_pseudo_label(folder, case, segmentation, confidence(probabilities, label_manager.has_regions).numpy(),
                      foreground_locations(segmentation[None], label_manager), patch_size)


class ExportWorkers:
    """Exports in ``n`` worker processes while the next case is predicted, as nnUNetv2_predict's ``-nps``
    (at most 2n cases wait, bounding memory); ``n = 0`` exports in this process."""

    def __init__(self, n: int):
        self.n = n
        self.pool = None
        self.pending = []

    def __enter__(self):
        if self.n > 0:
            import multiprocessing
            self.pool = multiprocessing.get_context("spawn").Pool(self.n)
        return self

    def submit(self, *job) -> None:
        if self.pool is None:
            export_pseudo_label(*job)
            return
        while sum(not r.ready() for r in self.pending) >= 2 * self.n:
            time.sleep(0.05)
        self.pending.append(self.pool.apply_async(export_pseudo_label, job))

    def __exit__(self, *exc):
        try:
            if exc[0] is None:
                for result in self.pending:
                    result.get()  # re-raises a worker's error
        finally:
            if self.pool is not None:
                self.pool.terminate() if exc[0] is not None else self.pool.close()
                self.pool.join()


def make_pseudo_labels(dataset: str, configuration: str, folds: Sequence, trainer: str, plans: str = "nnUNetPlans",
                       checkpoint: str = "checkpoint_final.pth", device: str = "cuda", overwrite: bool = False,
                       use_mirroring: bool = True, student_fold=None, progress: bool = True,
                       num_export_processes: int = 3) -> str:
    """Predict every unlabeled case of the student's fold that has no pseudo-label yet; returns the folder."""
    import blosc2
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from tqdm import tqdm

    from nnunet_ssl.data.loaders import nonzero_mask_segmentation

    dataset_name, base, plans_dict = dataset_folders(dataset, plans, configuration)
    folds = [f if f == "all" else int(f) for f in folds]
    if student_fold is None:
        if len(folds) != 1:
            raise SSLConfigError(f"with several teacher folds ({folds}), say with -student_fold which fold's student "
                                 f"the pseudo-labels are for (its split's unlabeled cases are predicted)")
        student_fold = folds[0]
    model_folder = get_output_folder(dataset_name, trainer, plans, configuration)
    files = checkpoint_files(model_folder, folds, checkpoint,
                             f"nnUNetv2_train {dataset} {configuration} FOLD -tr {trainer} -p {plans}")
    check_model_fits_dataset(model_folder, dataset_name, base, plans, plans_dict, configuration)
    data_identifier = plans_dict["configurations"][configuration].get("data_identifier", f"{plans}_{configuration}")
    preprocessed_folder = os.path.join(base, data_identifier)
    cases, split = unlabeled_cases_of_fold(base, preprocessed_folder, student_fold)

    folder = pseudo_label_folder(base, plans, configuration, student_fold)
    manifest = {"dataset": dataset_name, "plans": plans, "configuration": configuration,
                "data_identifier": data_identifier, "fold": student_fold, "split": split,
                "teacher": teacher_record(trainer, plans, configuration, folds, checkpoint, model_folder, files,
                                          use_mirroring),
                "created": datetime.datetime.now().isoformat(timespec="seconds")}
    prepare_output(folder, manifest, overwrite)
    todo = [c for c in sorted(cases) if c not in set(cases_done(folder))]
    print(f"Teacher {trainer} (plans {plans}, configuration {configuration}, folds {folds}, {checkpoint}); "
          f"{len(cases)} unlabeled cases, {len(cases) - len(todo)} already pseudo-labeled in {folder}")

    if todo:
        torch_device = torch.device(device)
        predictor = nnUNetPredictor(use_mirroring=use_mirroring, device=torch_device, allow_tqdm=False,
                                    perform_everything_on_device=torch_device.type == "cuda")
        predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint)
        export = (predictor.label_manager, predictor.configuration_manager.patch_size, folder)
        mask_channels = [c for c, masked in enumerate(predictor.configuration_manager.use_mask_for_norm) if masked]
        with ExportWorkers(num_export_processes) as workers:
            for case in tqdm(todo, desc="Pseudo-labelling", disable=not progress):
                image = torch.from_numpy(np.asarray(blosc2.open(urlpath=os.path.join(cases[case], case + ".b2nd"),
                                                                mode="r")[:]))
                outside = (nonzero_mask_segmentation(image, mask_channels)[0] < 0).numpy() if mask_channels else None
                workers.submit(case, predictor.predict_logits_from_preprocessed_data(image), outside, *export)
    manifest["completed"] = datetime.datetime.now().isoformat(timespec="seconds")
    write_manifest(folder, manifest)
    next_round = " under a new trainer name (a subclass; see README, Self-training)" \
        if trainer == STUDENT_TRAINER else ""
    print(f"Pseudo-labels of {len(cases)} cases in {folder}\nTrain the student with: nnUNetv2_train {dataset} "
          f"{configuration} {student_fold} -tr {STUDENT_TRAINER} -p {plans}{next_round}")
    return folder


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-c", required=True, help="configuration of the teacher and the student, e.g. 3d_fullres")
    parser.add_argument("-f", required=True, nargs="+", help="teacher fold(s); several are ensembled (mean logits)")
    parser.add_argument("-tr", required=True, help="trainer of the teacher, e.g. nnUNetTrainer")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("-chk", default="checkpoint_final.pth",
                        help="teacher checkpoint (default: checkpoint_final.pth)")
    parser.add_argument("-device", default="cuda", choices=("cuda", "cpu", "mps"), help="default: cuda")
    parser.add_argument("-student_fold", default=None,
                        help="fold the student trains (its split's unlabeled cases are predicted); default: the "
                             "teacher's fold, required with several")
    parser.add_argument("-nps", type=int, default=3,
                        help="processes exporting pseudo-labels while the next case is predicted (default 3, as "
                             "nnUNetv2_predict; 0: none). No -npp: the images are already preprocessed")
    parser.add_argument("--disable_tta", action="store_true", help="no test-time mirroring (faster, less accurate)")
    parser.add_argument("--overwrite", action="store_true", help="make all pseudo-labels again")
    parser.add_argument("--disable_progress_bar", action="store_true")
    args = parser.parse_args(argv)
    student_fold = args.student_fold
    if student_fold not in (None, "all"):
        student_fold = int(student_fold)
    try:
        make_pseudo_labels(args.d, args.c, args.f, args.tr, args.p, args.chk, args.device, args.overwrite,
                           not args.disable_tta, student_fold, not args.disable_progress_bar, args.nps)
    except SSLConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
