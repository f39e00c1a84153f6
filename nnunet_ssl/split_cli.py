"""``nnunet_ssl_split``: write an SSL benchmark split into ``nnUNet_preprocessed/<Dataset>/splits_final.json``.

Each fold is nnU-Net's cross-validation fold (same seed, so ``val`` matches nnU-Net's default split) whose
training cases are split into a random labeled subset (``train``) and the rest (``unlabeled``). Plain
``nnUNetTrainer`` on such a split is the labeled-only baseline; SSL trainers also use the unlabeled cases without
reading their labels. Run it after ``nnUNetv2_plan_and_preprocess``, or with ``--raw`` before planning: the split
then goes into ``nnUNet_raw/<Dataset>/splits_final.json`` (case ids from imagesTr), where
``nnunet_ssl_plan_and_preprocess`` finds it and plans without reading the unlabeled cases' labels.
"""
import argparse
import os
import sys

from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.preprocess_unlabeled import resolve_dataset
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
    parser.add_argument("--raw", action="store_true", help="write into nnUNet_raw/<Dataset>/ before planning, for "
                                                           "nnunet_ssl_plan_and_preprocess")
    args = parser.parse_args(argv)
    try:
        from batchgenerators.utilities.file_and_folder_operations import load_json
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

        variable = "nnUNet_raw" if args.raw else "nnUNet_preprocessed"
        folder = os.path.join(os.environ.get(variable, ""), resolve_dataset(args.d, variable))
        if not os.path.isfile(os.path.join(folder, "dataset.json")):
            raise SSLConfigError(f"unknown dataset '{args.d}': no {folder}/dataset.json" +
                                 ("" if args.raw else f". Run nnUNetv2_plan_and_preprocess -d {args.d} first."))
        dataset_json = load_json(os.path.join(folder, "dataset.json"))
        case_ids = sorted(get_filenames_of_train_images_and_targets(folder, dataset_json)) if args.raw \
            else labeled_case_ids(folder, dataset_json["file_ending"])
        splits = make_ssl_splits(case_ids, args.num_labeled, args.fraction, args.seed, args.folds)
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
