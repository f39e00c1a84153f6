"""``nnunet_ssl_plan_and_preprocess``: nnU-Net's planning and preprocessing for a benchmark split, without ever
opening the label files of the cases the split marks unlabeled.

``nnUNetv2_plan_and_preprocess`` reads every label: the fingerprint takes the intensity statistics that CT
normalisation uses from the foreground voxels of every training case, and preprocessing writes each case's
segmentation and foreground locations. For a benchmark split (``splits_final.json`` with ``"unlabeled"`` lists,
written into the raw dataset before planning by ``nnunet_ssl_split --raw`` or the LA / ACDC converters) this
command runs the same steps, with nnU-Net's own functions, except that for the split's unlabeled cases

* the fingerprint reads their images only (spacing, shape and size after cropping to the nonzero region), and the
  foreground intensity statistics come from the other cases alone (exactly what nnU-Net computes on a dataset
  holding only those cases);
* preprocessing writes their images (and properties, without foreground locations) and no segmentation;
* their labels are not copied to ``gt_segmentations``.

Planning itself (nnU-Net's experiment planner) reads no label. The nnU-Net functions this relies on are listed in
:data:`nnunet_ssl.nnunet_internals.PLAN_AND_PREPROCESS_FUNCTIONS` and checked at start.
"""
import argparse
import os
import shutil
import sys
from typing import List, Optional, Set

import numpy as np

from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.preprocess_unlabeled import map_with_progress, preprocess_cases, resolve_dataset
from nnunet_ssl.splits import read_splits

def never_read_cases(splits_file: str, fold: Optional[int]) -> Set[str]:
    """The cases whose labels planning must not read: fold ``fold``'s unlabeled list, or (no fold) every fold's.
    Without a fold, a case labeled (train or val) in one fold and unlabeled in another is an error."""
    splits = read_splits(splits_file)
    if fold is not None:
        if not 0 <= fold < len(splits):
            raise SSLConfigError(f"fold {fold} is not in {splits_file} ({len(splits)} fold(s))")
        splits = [splits[fold]]
    unlabeled = set().union(*(f.get("unlabeled", []) for f in splits))
    if not unlabeled:
        raise SSLConfigError(f"{splits_file} marks no case unlabeled; plan with nnUNetv2_plan_and_preprocess")
    labeled = set().union(*(set(f["train"]) | set(f["val"]) for f in splits))
    both = sorted(unlabeled & labeled)
    if both:
        raise SSLConfigError(f"{splits_file}: {len(both)} case(s) are labeled in one fold and unlabeled in another "
                             f"({', '.join(both[:3])}{', ...' if len(both) > 3 else ''}); plan each fold on its own "
                             f"with --fold K (plans nnUNetPlans_foldK, train with -p nnUNetPlans_foldK)")
    return unlabeled


def _case_fingerprint(job):
    """nnU-Net's analyze_case for a labeled case; for an unlabeled one the same geometry from its images alone."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    image_files, label_file, reader_writer_class, num_samples = job
    if label_file is not None:
        return DatasetFingerprintExtractor.analyze_case(image_files, label_file, reader_writer_class, num_samples)
    images, properties = reader_writer_class().read_images(image_files)
    cropped = crop_to_nonzero(images)[0]
    return cropped.shape[1:], properties["spacing"], None, None, np.prod(cropped.shape[1:]) / np.prod(images.shape[1:])


def extract_fingerprint(dataset_name: str, unlabeled: Set[str], num_processes: int) -> dict:
    """nnU-Net's dataset fingerprint (DatasetFingerprintExtractor.run), saved where nnU-Net saves it, with the
    foreground intensities of the labeled cases only and the geometry of all cases."""
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.paths import nnUNet_preprocessed

    extractor = DatasetFingerprintExtractor(dataset_name, num_processes)
    cases = extractor.dataset
    labeled = [case for case in cases if case not in unlabeled]
    unknown = sorted(unlabeled - set(cases))
    if unknown:
        raise SSLConfigError(f"unlabeled case(s) {', '.join(unknown[:3])} of the split are not training cases of "
                             f"{dataset_name} (imagesTr)")
    if not labeled:
        raise SSLConfigError(f"the split marks every training case of {dataset_name} unlabeled")
    reader_writer = determine_reader_writer_from_dataset_json(extractor.dataset_json,
                                                              cases[labeled[0]]["images"][0])
    num_samples = int(extractor.num_foreground_voxels_for_intensitystats // len(labeled))
    jobs = [(cases[c]["images"], None if c in unlabeled else cases[c]["label"], reader_writer, num_samples)
            for c in cases]
    results = map_with_progress(_case_fingerprint, jobs, num_processes,
                                f"Extracting dataset fingerprint ({len(unlabeled)} unlabeled cases: images only)")
    labeled_results = [r for r, case in zip(results, cases) if case not in unlabeled]
    intensity_statistics = {}
    for channel in range(len(labeled_results[0][2])):
        values = np.concatenate([r[2][channel] for r in labeled_results])
        percentile_00_5, median, percentile_99_5 = np.percentile(values, np.array((0.5, 50.0, 99.5)))
        intensity_statistics[channel] = {
            "mean": float(np.mean(values)), "median": float(median), "std": float(np.std(values)),
            "min": float(np.min(values)), "max": float(np.max(values)),
            "percentile_99_5": float(percentile_99_5), "percentile_00_5": float(percentile_00_5)}
    fingerprint = {"spacings": [r[1] for r in results], "shapes_after_crop": [r[0] for r in results],
                   "foreground_intensity_properties_per_channel": intensity_statistics,
                   "median_relative_size_after_cropping": np.median([r[4] for r in results], 0)}
    os.makedirs(os.path.join(nnUNet_preprocessed, dataset_name), exist_ok=True)
    save_json(fingerprint, os.path.join(nnUNet_preprocessed, dataset_name, "dataset_fingerprint.json"))
    return fingerprint


def preprocess(dataset_name: str, plans_identifier: str, configurations: List[str], num_processes: List[int],
               unlabeled: Set[str]) -> None:
    """nnU-Net's preprocess_dataset for the labeled cases; the unlabeled cases' images only."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    folder = os.path.join(nnUNet_preprocessed, dataset_name)
    plans_manager = PlansManager(os.path.join(folder, plans_identifier + ".json"))
    dataset_json = load_json(os.path.join(folder, "dataset.json"))
    cases = get_filenames_of_train_images_and_targets(os.path.join(nnUNet_raw, dataset_name), dataset_json)
    for configuration, n in zip(configurations, num_processes):
        if configuration not in plans_manager.available_configurations:
            print(f"INFO: configuration {configuration} is not in {plans_identifier}.json; skipped")
            continue
        configuration_manager = plans_manager.get_configuration(configuration)
        output = os.path.join(folder, configuration_manager.data_identifier)
        shutil.rmtree(output, ignore_errors=True)
        os.makedirs(output)
        jobs = [(os.path.join(output, case), files["images"], None if case in unlabeled else files["label"],
                 plans_manager, configuration_manager, dataset_json) for case, files in cases.items()]
        preprocess_cases(jobs, n, f"Preprocessing {configuration} ({len(unlabeled)} unlabeled cases: images only)")
        for case in unlabeled:  # nnU-Net wrote the nonzero mask as segmentation: no label a trainer may take
            os.remove(os.path.join(output, case + "_seg.b2nd"))
    gt_folder = os.path.join(folder, "gt_segmentations")
    os.makedirs(gt_folder, exist_ok=True)
    for case, files in cases.items():
        if case not in unlabeled:
            shutil.copyfile(files["label"], os.path.join(gt_folder, case + dataset_json["file_ending"]))


def plans_name(planner: str, overwrite_plans_name: Optional[str], fold: Optional[int]) -> str:
    """The plans identifier: nnU-Net's (the planner's default or -overwrite_plans_name), + ``_fold<K>`` per fold."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from nnunet_ssl.nnunet_internals import planner_default_plans_name

    name = overwrite_plans_name
    if name is None:
        planner_class = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "experiment_planning"),
                                                    planner, current_module="nnunetv2.experiment_planning")
        if planner_class is None:
            raise SSLConfigError(f"unknown experiment planner -pl {planner}")
        name = planner_default_plans_name(planner_class)
    return name if fold is None else f"{name}_fold{fold}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("--fold", type=int, help="plan for this fold of the split only (its unlabeled cases' "
                                                 "labels unread); plans get the suffix _fold<K>")
    parser.add_argument("-c", nargs="+", default=["2d", "3d_fullres", "3d_lowres"],
                        help="configurations to preprocess (nnU-Net's default: 2d 3d_fullres 3d_lowres)")
    parser.add_argument("-np", type=int, nargs="+", help="processes per configuration (nnU-Net's default: 8 for 2d "
                                                         "and 3d_lowres, 4 otherwise)")
    parser.add_argument("-npfp", type=int, default=8, help="processes for the fingerprint (default 8)")
    parser.add_argument("-pl", default="ExperimentPlanner", help="nnU-Net experiment planner class")
    parser.add_argument("-gpu_memory_target", type=float, help="as nnUNetv2_plan_and_preprocess")
    parser.add_argument("-preprocessor_name", default="DefaultPreprocessor", help="as nnUNetv2_plan_and_preprocess")
    parser.add_argument("-overwrite_target_spacing", nargs="+", help="as nnUNetv2_plan_and_preprocess")
    parser.add_argument("-overwrite_plans_name", help="plans identifier (default: the planner's)")
    parser.add_argument("--no_pp", action="store_true", help="fingerprint and planning only")
    args = parser.parse_args(argv)
    try:
        from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiments
        from nnunetv2.paths import nnUNet_raw

        from nnunet_ssl.nnunet_internals import PLAN_AND_PREPROCESS_FUNCTIONS, check_signatures

        check_signatures(PLAN_AND_PREPROCESS_FUNCTIONS, "nnunet_ssl_plan_and_preprocess")
        dataset_name = resolve_dataset(args.d, "nnUNet_raw", "nnUNet_preprocessed")
        splits_file = os.path.join(nnUNet_raw, dataset_name, "splits_final.json")
        if not os.path.isfile(splits_file):
            raise SSLConfigError(f"no {splits_file}. Write the split before planning with nnunet_ssl_split -d {args.d} "
                                 f"--raw ..., or plan a dataset without one with nnUNetv2_plan_and_preprocess.")
        unlabeled = never_read_cases(splits_file, args.fold)
        plans = plans_name(args.pl, args.overwrite_plans_name, args.fold)
        print(f"{dataset_name}: the labels of {len(unlabeled)} unlabeled cases of {splits_file} are never read")
        extract_fingerprint(dataset_name, unlabeled, args.npfp)
        plan_experiments([dataset_name], args.pl, args.gpu_memory_target, args.preprocessor_name,
                         args.overwrite_target_spacing, plans)
        if not args.no_pp:
            num_processes = args.np or [{"2d": 8, "3d_lowres": 8}.get(c, 4) for c in args.c]
            if len(num_processes) == 1:
                num_processes = num_processes * len(args.c)
            preprocess(dataset_name, plans, args.c, num_processes, unlabeled)
        print(f"Plans {plans} written; train with nnUNetv2_train {args.d} CONFIGURATION FOLD -p {plans} -tr ...")
    except SSLConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
