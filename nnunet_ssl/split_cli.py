"""``nnunet_ssl_split``: write an SSL benchmark split into ``nnUNet_preprocessed/<Dataset>/splits_final.json``.

Each fold is nnU-Net's cross-validation fold (same seed, so ``val`` matches nnU-Net's default split) whose
training cases are split into a random labeled subset (``train``) and the rest (``unlabeled``). Plain
``nnUNetTrainer`` on such a split is the labeled-only baseline; SSL trainers also use the unlabeled cases without
reading their labels. Run it after ``nnUNetv2_plan_and_preprocess``.
"""
import argparse
import os
import sys

from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.splits import make_ssl_splits, write_splits


def labeled_case_ids(preprocessed_dataset_folder: str, file_ending: str):
    gt_folder = os.path.join(preprocessed_dataset_folder, "gt_segmentations")
    if not os.path.isdir(gt_folder):
        raise SSLConfigError(f"no {gt_folder}. Run nnUNetv2_plan_and_preprocess for this dataset first.")
    return sorted(f[:-len(file_ending)] for f in os.listdir(gt_folder) if f.endswith(file_ending))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", required=True, help="dataset name or id")
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--num-labeled", type=int, help="labeled cases per fold (1 = exemplar setting)")
    amount.add_argument("--fraction", type=float, help="fraction of each fold's training cases that is labeled")
    parser.add_argument("--seed", type=int, default=12345, help="seed for folds and labeled subsets (default 12345, "
                                                                "nnU-Net's cross-validation seed)")
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default 5; 1 = one 80:20 fold)")
    parser.add_argument("--overwrite", action="store_true", help="replace a different existing splits_final.json")
    args = parser.parse_args(argv)
    try:
        from batchgenerators.utilities.file_and_folder_operations import load_json
        from nnunetv2.paths import nnUNet_preprocessed
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

        if not nnUNet_preprocessed.is_set():
            raise SSLConfigError("the environment variable nnUNet_preprocessed is not set")
        try:
            dataset_name = maybe_convert_to_dataset_name(args.d)
        except RuntimeError as e:
            raise SSLConfigError(f"unknown dataset '{args.d}': {e}") from None
        folder = os.path.join(nnUNet_preprocessed, dataset_name)
        if not os.path.isfile(os.path.join(folder, "dataset.json")):
            raise SSLConfigError(f"unknown dataset '{args.d}': no {folder}/dataset.json. "
                                 f"Run nnUNetv2_plan_and_preprocess -d {args.d} first.")
        file_ending = load_json(os.path.join(folder, "dataset.json"))["file_ending"]
        splits = make_ssl_splits(labeled_case_ids(folder, file_ending), args.num_labeled, args.fraction, args.seed,
                                 args.folds)
        path = os.path.join(folder, "splits_final.json")
        written = write_splits(path, splits, overwrite=args.overwrite)
        print(f"{'Wrote' if written else 'Unchanged:'} {path}")
        for k, fold in enumerate(splits):
            print(f"  fold {k}: {len(fold['train'])} labeled, {len(fold['unlabeled'])} unlabeled, "
                  f"{len(fold['val'])} validation cases")
    except SSLConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
