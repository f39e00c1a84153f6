"""nnunet_ssl_plan_and_preprocess: a benchmark split planned and preprocessed without opening the label files of
its unlabeled cases, on a CT-like dataset (CT normalisation uses the fingerprint's foreground intensities)."""
import functools
import json
import os
import pickle
import shutil

import pytest
import SimpleITK as sitk

from nnunet_ssl import plan_and_preprocess, split_cli
from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.synthetic import make_dataset


@pytest.fixture
def ct_dataset(tmp_path, monkeypatch):
    """Dataset997, 6 CT-like cases, with a split written into the raw dataset before planning (2 labeled, 1 val,
    3 unlabeled); the unlabeled cases have 3x the intensities and their label files are deleted."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
    nnunet_init = DatasetFingerprintExtractor.__init__

    @functools.wraps(nnunet_init)
    def fewer_intensity_samples(self, *args, **kwargs):  # nnU-Net's 1e8 would take 33 M samples per labeled case
        nnunet_init(self, *args, **kwargs)
        self.num_foreground_voxels_for_intensitystats = 30000

    monkeypatch.setattr(DatasetFingerprintExtractor, "__init__", fewer_intensity_samples)
    folder = make_dataset(str(tmp_path / "nnUNet_raw"), dataset_id=997, name="CTLike", num_labeled=6,
                          num_unlabeled=0, num_test=0, shape=(10, 14, 12))
    with open(os.path.join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    dataset_json["channel_names"] = {"0": "CT"}
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f)
    split_cli.main(["-d", "997", "--raw", "--num-labeled", "2", "--folds", "1"])
    with open(os.path.join(folder, "splits_final.json")) as f:
        split = json.load(f)[0]
    for case in split["unlabeled"]:
        image_file = os.path.join(folder, "imagesTr", f"{case}_0000.nii.gz")
        sitk.WriteImage(sitk.ReadImage(image_file) * 3, image_file)
        os.remove(os.path.join(folder, "labelsTr", f"{case}.nii.gz"))  # any attempt to read it fails
    return folder, split


def nnunet_fingerprint_of(raw_folder, cases, dataset_id):
    """nnU-Net's own fingerprint of a copy of the dataset that holds only ``cases``."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    copy = os.path.join(os.path.dirname(raw_folder), f"Dataset{dataset_id}_Copy")
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(copy, sub))
    shutil.copy(os.path.join(raw_folder, "dataset.json"), copy)
    for case in cases:
        shutil.copy(os.path.join(raw_folder, "imagesTr", f"{case}_0000.nii.gz"), os.path.join(copy, "imagesTr"))
        shutil.copy(os.path.join(raw_folder, "labelsTr", f"{case}.nii.gz"), os.path.join(copy, "labelsTr"))
    return DatasetFingerprintExtractor(dataset_id, 1).run(overwrite_existing=True)


def test_planning_and_preprocessing_never_read_the_unlabeled_cases_labels(ct_dataset):
    raw_folder, split = ct_dataset
    plan_and_preprocess.main(["-d", "997", "-c", "2d", "-np", "1", "-npfp", "1"])

    preprocessed = os.path.join(os.environ["nnUNet_preprocessed"], "Dataset997_CTLike")
    with open(os.path.join(preprocessed, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    labeled = split["train"] + split["val"]
    expected = nnunet_fingerprint_of(raw_folder, labeled, 998)["foreground_intensity_properties_per_channel"]
    assert plans["foreground_intensity_properties_per_channel"] == json.loads(json.dumps(expected))
    assert plans["configurations"]["2d"]["normalization_schemes"] == ["CTNormalization"]
    with open(os.path.join(preprocessed, "dataset_fingerprint.json")) as f:
        assert len(json.load(f)["spacings"]) == 6, "the unlabeled cases' geometry counts"

    data = os.path.join(preprocessed, "nnUNetPlans_2d")
    for case in labeled:
        assert os.path.isfile(os.path.join(data, f"{case}_seg.b2nd"))
        assert os.path.isfile(os.path.join(preprocessed, "gt_segmentations", f"{case}.nii.gz"))
    for case in split["unlabeled"]:
        assert os.path.isfile(os.path.join(data, f"{case}.b2nd"))
        assert not os.path.exists(os.path.join(data, f"{case}_seg.b2nd"))
        with open(os.path.join(data, f"{case}.pkl"), "rb") as f:
            assert "class_locations" not in pickle.load(f)
    assert sorted(os.listdir(os.path.join(preprocessed, "gt_segmentations"))) == sorted(f"{c}.nii.gz" for c in labeled)
    with open(os.path.join(preprocessed, "splits_final.json")) as f:
        assert json.load(f)[0] == split


def test_cases_labeled_in_one_fold_and_unlabeled_in_another_need_one_plan_per_fold(tmp_path):
    splits_file = tmp_path / "splits_final.json"
    splits_file.write_text(json.dumps([{"train": ["a"], "val": ["b"], "unlabeled": ["c", "d"]},
                                       {"train": ["c"], "val": ["d"], "unlabeled": ["a", "b"]}]))
    with pytest.raises(SSLConfigError, match="4 case.* labeled in one fold and unlabeled in another.*--fold K"):
        plan_and_preprocess.never_read_cases(str(splits_file), None)
    assert plan_and_preprocess.never_read_cases(str(splits_file), 1) == {"a", "b"}
    with pytest.raises(SSLConfigError, match="fold 2 is not in"):
        plan_and_preprocess.never_read_cases(str(splits_file), 2)
