"""``nnunet_ssl_preprocess_unlabeled``: preprocess ``nnUNet_raw/<Dataset>/imagesUnlabeled`` with the dataset's plans.

The images go through the configuration's own preprocessor (cropping, normalisation, resampling exactly as the
labeled cases) into ``nnUNet_preprocessed/<Dataset>/<data_identifier>_unlabeled/``, a folder of its own so that
nnU-Net never mistakes them for labeled cases. Run it after ``nnUNetv2_plan_and_preprocess``, once per
configuration you train.
"""
import argparse
import multiprocessing
import os
import re
import shutil
import sys
from typing import Dict, List

from tqdm import tqdm

from nnunet_ssl.data.unlabeled import unlabeled_folder
from nnunet_ssl.errors import SSLConfigError

UNLABELED_IMAGES = "imagesUnlabeled"


def resolve_dataset(dataset: str, *variables: str) -> str:
    """The dataset's name from its name or id, after checking that nnU-Net's path ``variables`` are set."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    for variable in variables:
        if variable not in os.environ:
            raise SSLConfigError(f"the environment variable {variable} is not set (see nnU-Net's "
                                 f"set_environment_variables)")
    try:
        return maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise SSLConfigError(f"unknown dataset '{dataset}': {e}") from None


def find_unlabeled_cases(images_folder: str, file_ending: str, num_channels: int) -> Dict[str, List[str]]:
    """Case id -> channel files, in channel order. Raises on any file that does not fit the dataset."""
    if not os.path.isdir(images_folder):
        raise SSLConfigError(f"no folder {images_folder}. Put the unlabeled scans there, named like imagesTr "
                             f"(case_0000{file_ending}, one file per channel).")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    channels: Dict[str, Dict[int, str]] = {}
    for name in sorted(os.listdir(images_folder)):
        if name.startswith("."):
            continue
        match = pattern.match(name)
        if not match:
            raise SSLConfigError(f"{os.path.join(images_folder, name)}: expected a name like case_0000{file_ending} "
                                 f"(the dataset's file ending is '{file_ending}')")
        channels.setdefault(match.group(1), {})[int(match.group(2))] = os.path.join(images_folder, name)
    if not channels:
        raise SSLConfigError(f"{images_folder} holds no images")
    for case, files in channels.items():
        if sorted(files) != list(range(num_channels)):
            found = ", ".join(f"{c:04d}" for c in sorted(files))
            raise SSLConfigError(f"unlabeled case '{case}' in {images_folder} has channel files {found}; the dataset "
                                 f"has {num_channels} channel(s) (0000 to {num_channels - 1:04d})")
    return {case: [files[c] for c in range(num_channels)] for case, files in channels.items()}


def _preprocess_case(job) -> str:
    output_truncated, files, seg_file, plans_manager, configuration_manager, dataset_json = job
    try:
        configuration_manager.preprocessor_class(verbose=False).run_case_save(
            output_truncated, files, seg_file, plans_manager, configuration_manager, dataset_json)
    except Exception as e:
        raise SSLConfigError(f"could not preprocess {', '.join(files)}: {type(e).__name__}: {e}") from None
    return output_truncated


def map_with_progress(function, jobs: List[tuple], num_processes: int, description: str) -> list:
    """``[function(job) for job in jobs]`` with a progress bar, in a spawn pool as nnU-Net runs its workers, or in
    this process for ``num_processes`` 1."""
    if num_processes <= 1:
        return [function(job) for job in tqdm(jobs, desc=description)]
    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
        return list(tqdm(pool.imap(function, jobs), total=len(jobs), desc=description))


def preprocess_cases(jobs: List[tuple], num_processes: int, description: str) -> None:
    """Run the configuration's preprocessor on each ``(output_truncated, image files, seg file or None,
    plans_manager, configuration_manager, dataset_json)``. Without a seg file nnU-Net writes the image and, as
    ``_seg.b2nd``, its nonzero mask (0 inside, -1 outside)."""
    map_with_progress(_preprocess_case, jobs, num_processes, description)


def preprocess_unlabeled(dataset: str, configuration: str, plans: str = "nnUNetPlans",
                         num_processes: int = 4) -> str:
    """Preprocess every scan of imagesUnlabeled; returns the output folder."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_name = resolve_dataset(dataset, "nnUNet_raw", "nnUNet_preprocessed")
    plans_file = os.path.join(nnUNet_preprocessed, dataset_name, plans + ".json")
    if not os.path.isfile(plans_file):
        raise SSLConfigError(f"no plans file {plans_file}. Run nnUNetv2_plan_and_preprocess -d {dataset} first "
                             f"(or pass the plans identifier with -p).")
    plans_manager = PlansManager(plans_file)
    if configuration not in plans_manager.available_configurations:
        raise SSLConfigError(f"configuration '{configuration}' is not in {plans_file}; available: "
                             f"{', '.join(plans_manager.available_configurations)}")
    configuration_manager = plans_manager.get_configuration(configuration)
    if configuration_manager.previous_stage_name is not None:
        raise SSLConfigError(f"'{configuration}' is a cascade stage; SSL trainers do not support the cascade")
    dataset_json = load_json(os.path.join(nnUNet_preprocessed, dataset_name, "dataset.json"))
    num_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    cases = find_unlabeled_cases(os.path.join(nnUNet_raw, dataset_name, UNLABELED_IMAGES),
                                 dataset_json["file_ending"], num_channels)

    output_folder = unlabeled_folder(os.path.join(nnUNet_preprocessed, dataset_name,
                                                  configuration_manager.data_identifier))
    shutil.rmtree(output_folder, ignore_errors=True)
    os.makedirs(output_folder)
    jobs = [(os.path.join(output_folder, case), files, None, plans_manager, configuration_manager, dataset_json)
            for case, files in cases.items()]
    preprocess_cases(jobs, num_processes, f"Preprocessing unlabeled cases ({configuration})")
    return output_folder


def main(argv=None) -> None:
    from nnunetv2.configuration import default_num_processes

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-c", required=True, nargs="+", help="configuration(s), e.g. 3d_fullres 2d")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("-np", type=int, default=default_num_processes,
                        help=f"worker processes (default: {default_num_processes}, nnU-Net's default)")
    args = parser.parse_args(argv)
    try:
        for configuration in args.c:
            folder = preprocess_unlabeled(args.d, configuration, args.p, args.np)
            print(f"Unlabeled cases for {configuration} written to {folder}")
    except SSLConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
