"""``nnunet_ssl_preprocess_unlabeled``: preprocess ``nnUNet_raw/<Dataset>/imagesUnlabeled`` with the dataset's plans.

The images go through the configuration's own preprocessor (cropping, normalisation, resampling exactly as the
labeled cases) into ``nnUNet_preprocessed/<Dataset>/<data_identifier>_unlabeled/``, a folder of its own so that
nnU-Net never mistakes them for labeled cases. Run it after ``nnUNetv2_plan_and_preprocess``, once per
configuration you train.
"""
import argparse
import filecmp
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


def channel_files(folder: str, file_ending: str, strict: bool) -> Dict[str, Dict[int, str]]:
    """Case id -> {channel index: file} for the files named like ``case_0000<file_ending>`` in ``folder``. Other
    files are an error with ``strict``, else ignored (as nnU-Net ignores them in imagesTr)."""
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    channels: Dict[str, Dict[int, str]] = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith("."):
            continue
        match = pattern.match(name)
        if match:
            channels.setdefault(match.group(1), {})[int(match.group(2))] = os.path.join(folder, name)
        elif strict:
            raise SSLConfigError(f"{os.path.join(folder, name)}: expected a name like case_0000{file_ending} "
                                 f"(the dataset's file ending is '{file_ending}')")
    return channels


def find_unlabeled_cases(images_folder: str, file_ending: str, files_per_case: int) -> Dict[str, List[str]]:
    """Case id -> channel files, in channel order. Raises on any file that does not fit the dataset: a name
    unlike imagesTr's, or another number of files per case than the labeled cases have (nnU-Net reads an RGB
    image as 3 channels from one file, so files are not channels; the channels are checked when each case is
    read)."""
    if not os.path.isdir(images_folder):
        raise SSLConfigError(f"no folder {images_folder}. Put the unlabeled scans there, named like imagesTr "
                             f"(case_0000{file_ending}, as many files per case as the labeled cases have).")
    channels = channel_files(images_folder, file_ending, strict=True)
    if not channels:
        raise SSLConfigError(f"{images_folder} holds no images")
    for case, files in channels.items():
        if sorted(files) != list(range(files_per_case)):
            found = ", ".join(f"{c:04d}" for c in sorted(files))
            raise SSLConfigError(f"unlabeled case '{case}' in {images_folder} has the files {found}; the labeled "
                                 f"cases have {files_per_case} file(s) per case "
                                 f"({', '.join(f'{c:04d}' for c in range(files_per_case))})")
    return {case: [files[c] for c in range(files_per_case)] for case, files in channels.items()}


def labeled_image_files(images_folder: str, file_ending: str) -> Dict[str, List[str]]:
    """Case id -> image files of imagesTr (none if the folder is gone)."""
    if not os.path.isdir(images_folder):
        return {}
    return {case: [files[c] for c in sorted(files)]
            for case, files in channel_files(images_folder, file_ending, strict=False).items()}


def check_not_labeled(unlabeled: Dict[str, List[str]], labeled: Dict[str, List[str]]) -> None:
    """Raise if an unlabeled case has a labeled case's id or is a byte-for-byte copy of a labeled image."""
    clash = sorted(set(unlabeled) & set(labeled))
    if clash:
        raise SSLConfigError(f"unlabeled case(s) {', '.join(clash[:5])} in imagesUnlabeled have the id of labeled "
                             f"cases in imagesTr. A labeled case must not also be unlabeled; if these are other "
                             f"scans, rename them.")
    labeled_by_size: Dict[int, List[str]] = {}
    for files in labeled.values():
        for file in files:
            labeled_by_size.setdefault(os.path.getsize(file), []).append(file)
    for files in unlabeled.values():
        for file in files:
            for candidate in labeled_by_size.get(os.path.getsize(file), []):
                if filecmp.cmp(file, candidate, shallow=False):
                    raise SSLConfigError(f"{file} is a copy of the labeled image {candidate}. A labeled case must "
                                         f"not also be unlabeled: remove it from imagesUnlabeled.")


def _run_case_checking_channels(self, image_files, seg_file, plans_manager, configuration_manager, dataset_json):
    """nnU-Net's run_case, after checking the channel count of what its reader returns (a wrong count would
    otherwise end in an IndexError inside the normalisation)."""
    reader = plans_manager.image_reader_writer_class()
    data, properties = reader.read_images(image_files)
    expected = len(dataset_json["channel_names"])
    if data.shape[0] != expected:
        raise SSLConfigError(f"{', '.join(image_files)}: nnU-Net reads {data.shape[0]} channel(s), the dataset "
                             f"has {expected} ({', '.join(dataset_json['channel_names'].values())})")
    seg = reader.read_seg(seg_file)[0] if seg_file is not None else None
    return self.run_case_npy(data, seg, properties, plans_manager, configuration_manager, dataset_json)


def _preprocess_case(job) -> str:
    output_truncated, files, seg_file, plans_manager, configuration_manager, dataset_json = job
    preprocessor = configuration_manager.preprocessor_class
    checked = type(preprocessor.__name__, (preprocessor,), {"run_case": _run_case_checking_channels})
    try:
        checked(verbose=False).run_case_save(output_truncated, files, seg_file, plans_manager, configuration_manager,
                                             dataset_json)
    except SSLConfigError:
        raise
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
    """Preprocess every scan of imagesUnlabeled; returns the output folder. The folder is written under a
    hidden name and takes its place only when every case is done, so a failed run leaves no partial folder."""
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
    file_ending = dataset_json["file_ending"]
    labeled = labeled_image_files(os.path.join(nnUNet_raw, dataset_name, "imagesTr"), file_ending)
    files_per_case = len(next(iter(labeled.values()))) if labeled else len(dataset_json["channel_names"])
    cases = find_unlabeled_cases(os.path.join(nnUNet_raw, dataset_name, UNLABELED_IMAGES), file_ending,
                                 files_per_case)
    check_not_labeled(cases, labeled)

    output_folder = unlabeled_folder(os.path.join(nnUNet_preprocessed, dataset_name,
                                                  configuration_manager.data_identifier))
    staging = os.path.join(os.path.dirname(output_folder), f".{os.path.basename(output_folder)}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    jobs = [(os.path.join(staging, case), files, None, plans_manager, configuration_manager, dataset_json)
            for case, files in cases.items()]
    try:
        preprocess_cases(jobs, num_processes, f"Preprocessing unlabeled cases ({configuration})")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(output_folder, ignore_errors=True)
    os.rename(staging, output_folder)
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
