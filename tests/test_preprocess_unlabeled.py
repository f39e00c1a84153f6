import os
import pickle
import shutil

import numpy as np
import pytest

from conftest import clone_dataset
from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.preprocess_unlabeled import main, preprocess_unlabeled
from nnunet_ssl.synthetic import make_case, write_nifti


def test_unlabeled_scans_are_preprocessed_with_the_dataset_plans(ssl_env):
    """The session fixture ran the command for 2d and 3d_fullres: one image, mask and properties per scan."""
    for configuration in ("2d", "3d_fullres"):
        folder = os.path.join(ssl_env["nnUNet_preprocessed"], "Dataset990_SSLDemo",
                              f"nnUNetPlans_{configuration}_unlabeled")
        assert sorted(f for f in os.listdir(folder) if f.endswith(".b2nd") and "_seg" not in f) == \
            [f"unl_{i:03d}.b2nd" for i in range(4)]
        with open(os.path.join(folder, "unl_000.pkl"), "rb") as f:
            properties = pickle.load(f)
        assert "class_locations" not in properties and properties["spacing"] is not None


@pytest.fixture
def dataset(ssl_env, monkeypatch):
    """A fresh clone whose imagesUnlabeled each test fills with its own files."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(var, ssl_env[var])
    name = clone_dataset(ssl_env, 994, "BadInput")
    images = os.path.join(ssl_env["nnUNet_raw"], name, "imagesUnlabeled")
    shutil.rmtree(images)
    os.makedirs(images)
    yield images
    shutil.rmtree(os.path.join(ssl_env["nnUNet_raw"], name))
    shutil.rmtree(os.path.join(ssl_env["nnUNet_preprocessed"], name))


def write_scan(folder, name):
    image, _ = make_case((8, 10, 9), np.random.default_rng(0))
    write_nifti(image, os.path.join(folder, name))


@pytest.mark.parametrize("files, message", [
    (["scan_0000.nii"], r"scan_0000\.nii: expected a name like case_0000\.nii\.gz"),
    (["scan_0001.nii.gz"], r"'scan' .* has the files 0001; the labeled cases have 1 file\(s\) per case \(0000\)"),
    (["scan_0000.nii.gz", "scan_0001.nii.gz"], "'scan' .* has the files 0000, 0001"),
    ([], "holds no images"),
    (["case_001_0000.nii.gz"], "case_001 in imagesUnlabeled have the id of labeled cases in imagesTr"),
])
def test_bad_file_names_and_channel_counts_name_the_file(dataset, files, message):
    for name in files:
        write_scan(dataset, name)
    with pytest.raises(SSLConfigError, match=message):
        preprocess_unlabeled("994", "2d", num_processes=1)


def test_unreadable_scan_is_named_and_leaves_no_output_folder(dataset):
    with open(os.path.join(dataset, "broken_0000.nii.gz"), "wb") as f:
        f.write(b"not a nifti file")
    write_scan(dataset, "good_0000.nii.gz")
    with pytest.raises(SSLConfigError, match="could not preprocess .*broken_0000.nii.gz"):
        preprocess_unlabeled("994", "2d", num_processes=1)
    preprocessed = os.path.join(os.environ["nnUNet_preprocessed"], "Dataset994_BadInput")
    assert not [f for f in os.listdir(preprocessed) if "unlabeled" in f], "a failed run must leave no folder behind"


def test_a_labeled_image_copied_into_imagesUnlabeled_is_caught(dataset):
    labeled = os.path.join(os.path.dirname(dataset), "imagesTr", "case_003_0000.nii.gz")
    shutil.copy(labeled, os.path.join(dataset, "extra_scan_0000.nii.gz"))
    with pytest.raises(SSLConfigError, match=r"extra_scan_0000.nii.gz is a copy of the labeled image "
                                             r".*case_003_0000.nii.gz"):
        preprocess_unlabeled("994", "2d", num_processes=1)


@pytest.mark.parametrize("args, message", [
    (["-d", "555", "-c", "2d"], "unknown dataset '555'"),
    (["-d", "994", "-c", "3d_lowres"], "configuration '3d_lowres' is not in .*available: 2d, 3d_fullres"),
    (["-d", "994", "-c", "2d", "-p", "nnUNetResEncUNetMPlans"], "no plans file .*nnUNetResEncUNetMPlans.json"),
])
def test_command_line_errors_name_the_setting(dataset, args, message):
    with pytest.raises(SystemExit, match=message):
        main(args)
