"""SSL splits: nnU-Net's ``splits_final.json`` with an extra ``"unlabeled"`` list per fold.

nnU-Net reads only ``train`` and ``val`` of a fold, so plain ``nnUNetTrainer`` on such a split trains on the labeled
cases alone (the labeled-only baseline), while the SSL trainers also draw the ``unlabeled`` cases, never reading
their labels.
"""
import json
import os
import random
from typing import Dict, List, Optional, Sequence

from nnunet_ssl.errors import SSLConfigError

Fold = Dict[str, List[str]]


def check_fold(fold: Fold, where: str) -> None:
    """Raise if a fold's unlabeled ids overlap its train or val ids, or if train is empty."""
    if not fold.get("train"):
        raise SSLConfigError(f"{where}: the fold has no labeled training case ('train' is empty)")
    unlabeled = set(fold.get("unlabeled", []))
    for key in ("train", "val"):
        overlap = sorted(unlabeled & set(fold.get(key, [])))
        if overlap:
            raise SSLConfigError(
                f"{where}: {len(overlap)} unlabeled case(s) are also in '{key}' ({', '.join(overlap[:5])}"
                f"{', ...' if len(overlap) > 5 else ''}). Unlabeled, train and val cases must be disjoint.")


def check_enough_cases_for_default_split(case_ids: Sequence[str], splits_file: str, dataset: str,
                                        configuration: str, fold: int, trainer: str, folds: int = 5) -> None:
    """Raise, naming the options, if nnU-Net cannot make its default ``folds``-fold split of ``case_ids``
    (scikit-learn would fail inside nnU-Net)."""
    if len(case_ids) >= folds:
        return
    options = (f"  * train on every labeled case with fold 'all' (nnU-Net's final validation then runs on training "
               f"cases):\n      nnUNetv2_train {dataset} {configuration} all -tr {trainer}")
    if len(case_ids) >= 2:
        options += (f"\n  * or write a split with fewer folds, e.g. {len(case_ids)} folds that keep every training "
                    f"case labeled:\n      nnunet_ssl_split -d {dataset} --fraction 1 --folds {len(case_ids)}"
                    f"\n    (or put your own splits_final.json there)")
    raise SSLConfigError(
        f"{dataset} has {len(case_ids)} labeled case(s), fewer than the {folds} folds of nnU-Net's default "
        f"cross-validation, so fold {fold} cannot be made (there is no {splits_file}). Either\n{options}")


def fold_from_protocol(train_ids: Sequence[str], num_labeled: int, val_ids: Sequence[str]) -> Fold:
    """The literature's protocol: the first ``num_labeled`` ids of the train list are labeled, the rest unlabeled."""
    if not 1 <= num_labeled <= len(train_ids):
        raise SSLConfigError(f"num_labeled={num_labeled} must be between 1 and {len(train_ids)} (train cases)")
    fold = {"train": list(train_ids[:num_labeled]), "val": list(val_ids), "unlabeled": list(train_ids[num_labeled:])}
    check_fold(fold, "protocol split")
    return fold


def labeled_count(num_train: int, num_labeled: Optional[int], fraction: Optional[float]) -> int:
    """Number of labeled cases from an absolute count or a fraction (rounded, at least one)."""
    if (num_labeled is None) == (fraction is None):
        raise SSLConfigError("give exactly one of --num-labeled and --fraction")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise SSLConfigError(f"--fraction must be in (0, 1], got {fraction}")
        num_labeled = max(1, round(fraction * num_train))
    if not 1 <= num_labeled <= num_train:
        raise SSLConfigError(f"--num-labeled must be between 1 and {num_train} (training cases of the fold), "
                             f"got {num_labeled}")
    return num_labeled


def make_ssl_splits(case_ids: Sequence[str], num_labeled: Optional[int] = None, fraction: Optional[float] = None,
                    seed: int = 12345, folds: int = 5) -> List[Fold]:
    """nnU-Net's cross-validation folds (same seed and KFold as nnU-Net), each training part split into a random
    labeled subset and the unlabeled rest. ``folds=1`` gives a single random 80:20 train/val fold."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    case_ids = sorted(case_ids)
    if folds < 1:
        raise SSLConfigError(f"--folds must be at least 1, got {folds}")
    if folds == 1:
        shuffled = random.Random(seed).sample(case_ids, len(case_ids))
        n_val = max(1, round(0.2 * len(case_ids)))
        cv = [{"train": sorted(shuffled[n_val:]), "val": sorted(shuffled[:n_val])}]
    else:
        if len(case_ids) < folds:
            raise SSLConfigError(f"{len(case_ids)} cases cannot make {folds} folds")
        cv = generate_crossval_split(case_ids, seed=seed, n_splits=folds)
    splits = []
    for k, fold in enumerate(cv):
        n = labeled_count(len(fold["train"]), num_labeled, fraction)
        labeled = sorted(random.Random(seed + k).sample(list(fold["train"]), n))
        unlabeled = sorted(set(fold["train"]) - set(labeled))
        splits.append({"train": labeled, "val": list(fold["val"]), "unlabeled": unlabeled})
    return splits


def read_splits(path: str) -> List[Fold]:
    with open(path) as f:
        splits = json.load(f)
    if not isinstance(splits, list) or not all(isinstance(s, dict) and "train" in s and "val" in s for s in splits):
        raise SSLConfigError(f"{path} is not an nnU-Net splits file (a list of {{'train': [...], 'val': [...]}})")
    return splits


def write_splits(path: str, splits: List[Fold], overwrite: bool = False) -> bool:
    """Write ``splits`` to ``path``. An identical existing file is left alone (returns False); a different one is
    replaced only with ``overwrite``."""
    for k, fold in enumerate(splits):
        check_fold(fold, f"fold {k}")
    if os.path.isfile(path):
        if read_splits(path) == splits:
            return False
        if not overwrite:
            raise SSLConfigError(f"{path} already holds a different split. Pass --overwrite to replace it "
                                 f"(trained models of the old folds then no longer match their split).")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(splits, f, indent=2)
    return True
