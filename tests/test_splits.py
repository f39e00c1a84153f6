import json

import pytest

from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.splits import fold_from_protocol, make_ssl_splits, write_splits
from nnunet_ssl import split_cli

CASES = [f"case_{i:03d}" for i in range(20)]


def test_folds_follow_nnunet_crossvalidation_and_split_train_into_labeled_and_unlabeled():
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    splits = make_ssl_splits(CASES, num_labeled=3, seed=12345, folds=5)
    nnunet = generate_crossval_split(sorted(CASES), seed=12345, n_splits=5)
    assert len(splits) == 5
    for fold, reference in zip(splits, nnunet):
        assert fold["val"] == list(reference["val"])
        assert len(fold["train"]) == 3
        assert set(fold["train"]) | set(fold["unlabeled"]) == set(reference["train"])
        assert not set(fold["train"]) & set(fold["unlabeled"])


def test_split_is_deterministic_per_seed_and_fraction_rounds_with_at_least_one():
    assert make_ssl_splits(CASES, fraction=0.25, seed=1) == make_ssl_splits(CASES, fraction=0.25, seed=1)
    assert make_ssl_splits(CASES, fraction=0.25, seed=1) != make_ssl_splits(CASES, fraction=0.25, seed=2)
    assert [len(f["train"]) for f in make_ssl_splits(CASES, fraction=0.25)] == [4] * 5  # 25% of 16
    assert [len(f["train"]) for f in make_ssl_splits(CASES, fraction=0.01)] == [1] * 5
    single = make_ssl_splits(CASES, num_labeled=1, folds=1)
    assert len(single) == 1 and len(single[0]["val"]) == 4 and len(single[0]["train"]) == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_labeled=0), "between 1 and 16"), (dict(num_labeled=17), "between 1 and 16"),
    (dict(fraction=1.5), "--fraction"), (dict(), "exactly one"), (dict(num_labeled=2, fraction=0.1), "exactly one"),
])
def test_bad_amounts_are_rejected(kwargs, message):
    with pytest.raises(SSLConfigError, match=message):
        make_ssl_splits(CASES, **kwargs)


def test_protocol_labels_the_first_n_ids_of_the_list():
    fold = fold_from_protocol(["b", "a", "c", "d"], 2, ["v"])
    assert fold == {"train": ["b", "a"], "val": ["v"], "unlabeled": ["c", "d"]}


def test_write_refuses_a_different_split_unless_overwrite_and_rejects_overlaps(tmp_path):
    path = tmp_path / "splits_final.json"
    first = make_ssl_splits(CASES, num_labeled=2, seed=1)
    assert write_splits(str(path), first) is True
    assert write_splits(str(path), first) is False  # identical: left alone
    second = make_ssl_splits(CASES, num_labeled=2, seed=2)
    with pytest.raises(SSLConfigError, match="--overwrite"):
        write_splits(str(path), second)
    assert json.loads(path.read_text()) == first
    write_splits(str(path), second, overwrite=True)
    assert json.loads(path.read_text()) == second
    with pytest.raises(SSLConfigError, match="also in 'val'"):
        write_splits(str(path), [{"train": ["a"], "val": ["b"], "unlabeled": ["b"]}], overwrite=True)


def test_split_command_writes_into_the_preprocessed_dataset_folder(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "Dataset777_Toy"
    (folder / "gt_segmentations").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    for case in CASES[:10]:
        (folder / "gt_segmentations" / f"{case}.nii.gz").write_bytes(b"")
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    split_cli.main(["-d", "Dataset777_Toy", "--num-labeled", "2", "--folds", "2", "--seed", "3"])
    splits = json.loads((folder / "splits_final.json").read_text())
    assert [len(f["train"]) for f in splits] == [2, 2] and [len(f["unlabeled"]) for f in splits] == [3, 3]
    assert "fold 1: 2 labeled, 3 unlabeled, 5 validation cases" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="already holds a different split"):
        split_cli.main(["-d", "Dataset777_Toy", "--num-labeled", "3", "--folds", "2"])
    with pytest.raises(SystemExit, match="unknown dataset"):
        split_cli.main(["-d", "Dataset778_Nothing", "--num-labeled", "3"])
