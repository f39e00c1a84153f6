"""Dataset converters on tiny synthetic inputs in each layout (plus one optional smoke test on the shared real data)."""
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ssl.dataset_conversion import acdc, la, labeled_folder
from nnunet_ssl.dataset_conversion.acdc import convert_acdc
from nnunet_ssl.dataset_conversion.la import convert_la
from nnunet_ssl.dataset_conversion.labeled_folder import convert_labeled_folder, parse_labels
from nnunet_ssl.errors import SSLConfigError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def raw(tmp_path, monkeypatch) -> Path:
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(variable, str(tmp_path / variable))
    return tmp_path / "nnUNet_raw"


def write_list(path: Path, ids) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def write_h5(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, array in arrays.items():
            f.create_dataset(key, data=array)


def random_case(shape, num_classes: int):
    return rng.normal(size=shape).astype(np.float32), rng.integers(0, num_classes, size=shape).astype(np.uint8)


def case_ids(folder: Path, suffix: str = ".nii.gz") -> list:
    return sorted(f.name[:-len(suffix)] for f in folder.iterdir()) if folder.is_dir() else []


def read_json(path: Path):
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------------------------------- LA

LA_TRAIN = ["TRAIN3", "TRAIN0", "TRAIN5", "TRAIN1", "TRAIN4", "TRAIN2"]  # list order, not sorted order
LA_TEST = ["TEST1", "TEST0"]


@pytest.fixture
def la_h5(tmp_path) -> dict:
    """UA-MT layout; returns id -> (image, label) as stored, in (x, y, z) order."""
    cases = {case_id: random_case((7, 6, 5), 2) for case_id in LA_TRAIN + LA_TEST}
    for case_id, (image, label) in cases.items():
        write_h5(tmp_path / "la" / "2018LA_Seg_Training Set" / case_id / "mri_norm2.h5", image=image, label=label)
    write_list(tmp_path / "la" / "train.list", LA_TRAIN)
    write_list(tmp_path / "la" / "test.list", LA_TEST)
    return cases


def test_la_h5_protocol_split_and_files(tmp_path, raw, la_h5):
    folder = Path(convert_la(str(tmp_path / "la"), 5, num_labeled=2))
    assert folder == raw / "Dataset005_LA"
    assert case_ids(folder / "imagesTr", "_0000.nii.gz") == case_ids(folder / "labelsTr") == sorted(LA_TRAIN)
    assert case_ids(folder / "imagesTs", "_0000.nii.gz") == case_ids(folder / "labelsTs") == sorted(LA_TEST)
    dataset = read_json(folder / "dataset.json")
    assert dataset["labels"] == {"background": 0, "left_atrium": 1} and dataset["numTraining"] == 6
    assert dataset["channel_names"] == {"0": "MRI"} and dataset["file_ending"] == ".nii.gz"
    [fold] = read_json(folder / "splits_final.json")
    assert fold == {"train": LA_TRAIN[:2], "val": LA_TRAIN[:2], "unlabeled": LA_TRAIN[2:]}
    image, label = la_h5["TRAIN5"]
    written_image = sitk.ReadImage(str(folder / "imagesTr" / "TRAIN5_0000.nii.gz"))
    written_label = sitk.ReadImage(str(folder / "labelsTr" / "TRAIN5.nii.gz"))
    assert written_image.GetSize() == image.shape  # (x, y, z) axes kept
    assert written_image.GetSpacing() == written_label.GetSpacing() == (0.625, 0.625, 0.625)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written_image).transpose(2, 1, 0), image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written_label).transpose(2, 1, 0), label)


def test_la_nrrd_layout_reads_geometry_and_maps_255(tmp_path):
    spacing, origin = (0.7, 0.8, 1.25), (1.0, -2.0, 3.0)
    for case_id in ["A", "B", "C"]:
        image, label = random_case((4, 5, 6), 2)
        for name, array in (("lgemri.nrrd", image), ("laendo.nrrd", label * 255)):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing(spacing)
            itk.SetOrigin(origin)
            (tmp_path / "orig" / "Training Set" / case_id).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(itk, str(tmp_path / "orig" / "Training Set" / case_id / name))
    write_list(tmp_path / "lists" / "train.list", ["A", "B"])
    write_list(tmp_path / "lists" / "test.list", ["C"])
    folder = Path(convert_la(str(tmp_path / "orig"), 6, num_labeled=1, lists_dir=str(tmp_path / "lists")))
    written = sitk.ReadImage(str(folder / "labelsTs" / "C.nii.gz"))
    assert np.allclose(written.GetSpacing(), spacing) and np.allclose(written.GetOrigin(), origin)
    assert set(np.unique(sitk.GetArrayFromImage(written))) <= {0, 1}
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "orig" / "Training Set" / "C" / "laendo.nrrd")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), original // 255)


def test_la_missing_cases_need_allow_missing(tmp_path, raw, la_h5, capsys):
    for case_id in ("TRAIN4", "TEST0"):
        os.remove(tmp_path / "la" / "2018LA_Seg_Training Set" / case_id / "mri_norm2.h5")
        os.rmdir(tmp_path / "la" / "2018LA_Seg_Training Set" / case_id)
    with pytest.raises(SSLConfigError, match="TRAIN4.*--allow-missing"):
        convert_la(str(tmp_path / "la"), 5, num_labeled=2)
    folder = Path(convert_la(str(tmp_path / "la"), 5, num_labeled=2, allow_missing=True))
    assert "TRAIN4" in capsys.readouterr().err
    assert read_json(folder / "splits_final.json")[0]["unlabeled"] == ["TRAIN5", "TRAIN1", "TRAIN2"]
    assert case_ids(folder / "labelsTs") == ["TEST1"] and read_json(folder / "dataset.json")["numTraining"] == 5
    with pytest.raises(SSLConfigError, match="labeled case.*TRAIN4"):
        convert_la(str(tmp_path / "la"), 5, num_labeled=5, allow_missing=True, overwrite=True)


@pytest.mark.parametrize("damage, message", [
    (lambda d: os.remove(d / "test.list"), "test.list"),
    (lambda d: write_h5(d / "2018LA_Seg_Training Set" / "TRAIN1" / "mri_norm2.h5", image=np.zeros((3, 3, 3))),
     "TRAIN1.*'label'"),
    (lambda d: write_h5(d / "2018LA_Seg_Training Set" / "TRAIN1" / "mri_norm2.h5", image=np.zeros((3, 3, 3)),
                        label=np.zeros((3, 3, 2))), "TRAIN1.*shape"),
    (lambda d: write_h5(d / "2018LA_Seg_Training Set" / "TRAIN1" / "mri_norm2.h5", image=np.zeros((3, 3, 3)),
                        label=np.full((3, 3, 3), 2)), r"TRAIN1: label values \[2\]"),
    (lambda d: os.remove(d / "2018LA_Seg_Training Set" / "TEST1" / "mri_norm2.h5"), "TEST1: .* holds neither"),
    (lambda d: write_list(d / "test.list", ["TEST1", "TRAIN2"]), "share TRAIN2"),
])
def test_la_bad_input_names_the_case(tmp_path, raw, la_h5, damage, message):
    damage(tmp_path / "la")
    with pytest.raises(SSLConfigError, match=message):
        convert_la(str(tmp_path / "la"), 5, num_labeled=2)
    assert not raw.exists() or os.listdir(raw) == []  # nothing half-written


# --------------------------------------------------------------------------------------------------------- ACDC

ACDC_TRAIN = ["patient004", "patient002", "patient005", "patient001", "patient003"]
ACDC_VAL, ACDC_TEST = ["patient006"], ["patient007", "patient008"]


def frames(patients, numbers=("01", "02")):
    return [f"{p}_frame{n}" for p in patients for n in numbers]


@pytest.fixture
def acdc_h5(tmp_path) -> dict:
    """SSL4MIS layout: training volumes as slices, val/test as volumes; returns id -> (image, label)."""
    volumes = {}
    for k, volume_id in enumerate(frames(ACDC_TRAIN + ACDC_VAL + ACDC_TEST)):
        image, label = volumes[volume_id] = random_case((3 + k % 3, 6, 5), 4)  # (slices, H, W)
        if volume_id.split("_")[0] in ACDC_TRAIN:
            for n in range(len(image)):  # SSL4MIS writes slice N+1 from row N
                write_h5(tmp_path / "acdc" / "data" / f"{volume_id}_slice_{n + 1}.h5", image=image[n], label=label[n])
        else:
            write_h5(tmp_path / "acdc" / "data" / f"{volume_id}.h5", image=image, label=label)
    for name, patients in (("train", ACDC_TRAIN), ("val", ACDC_VAL), ("test", ACDC_TEST)):
        write_list(tmp_path / "acdc" / f"{name}.list", frames(patients))
    return volumes


def test_acdc_h5_restacks_slices_exactly_and_splits_by_patient(tmp_path, acdc_h5):
    folder = Path(convert_acdc(str(tmp_path / "acdc"), 27, num_labeled=2))
    assert case_ids(folder / "imagesTr", "_0000.nii.gz") == sorted(frames(ACDC_TRAIN + ACDC_VAL))
    assert case_ids(folder / "labelsTs") == sorted(frames(ACDC_TEST))
    [fold] = read_json(folder / "splits_final.json")
    assert fold == {"train": frames(ACDC_TRAIN[:2]), "val": frames(ACDC_VAL), "unlabeled": frames(ACDC_TRAIN[2:])}
    dataset = read_json(folder / "dataset.json")
    assert dataset["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3} and dataset["numTraining"] == 12
    for volume_id, subset in (("patient005_frame02", "Tr"), ("patient006_frame01", "Tr"), ("patient008_frame02", "Ts")):
        image, label = acdc_h5[volume_id]
        written_image = sitk.ReadImage(str(folder / f"images{subset}" / f"{volume_id}_0000.nii.gz"))
        written_label = sitk.ReadImage(str(folder / f"labels{subset}" / f"{volume_id}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written_image), image)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written_label), label)
        assert written_image.GetSpacing() == written_label.GetSpacing() == (1.5625, 1.5625, 10.0)


@pytest.mark.parametrize("damage, message", [
    (lambda d: os.remove(d / "data" / "patient002_frame01_slice_2.h5"), r"patient002_frame01: slice\(s\) \[2\]"),
    (lambda d: write_h5(d / "data" / "patient002_frame01_slice_2.h5", image=np.zeros((4, 4)), label=np.zeros((4, 4))),
     "patient002_frame01: slices must be 2D of one shape"),
    (lambda d: write_h5(d / "data" / "patient007_frame01.h5", image=np.zeros((2, 3, 3)),
                        label=np.full((2, 3, 3), 4)), r"patient007_frame01: label values \[4\]"),
    (lambda d: os.remove(d / "data" / "patient006_frame02.h5"), "patient006_frame02.*--allow-missing"),
    (lambda d: os.remove(d / "val.list"), "val.list not found"),
    (lambda d: write_list(d / "val.list", ["patient006_frame01", "patient003_frame02"]), "share patient003"),
])
def test_acdc_bad_input_names_the_case(tmp_path, acdc_h5, damage, message):
    damage(tmp_path / "acdc")
    with pytest.raises(SSLConfigError, match=message):
        convert_acdc(str(tmp_path / "acdc"), 27, num_labeled=2)


def test_acdc_nifti_layout_keeps_frames_and_header_spacing(tmp_path):
    spacing = (1.37, 1.37, 5.0)
    for patient in ACDC_TRAIN + ACDC_VAL + ACDC_TEST:
        for frame in ("01", "12"):
            image, label = random_case((4, 6, 5), 4)
            for suffix, array in (("", image), ("_gt", label)):
                itk = sitk.GetImageFromArray(array)
                itk.SetSpacing(spacing)
                folder = tmp_path / "nifti" / "training" / patient
                folder.mkdir(parents=True, exist_ok=True)
                sitk.WriteImage(itk, str(folder / f"{patient}_frame{frame}{suffix}.nii.gz"))
    for name, patients in (("train", ACDC_TRAIN), ("val", ACDC_VAL), ("test", ACDC_TEST)):
        write_list(tmp_path / "nifti" / f"{name}.list", frames(patients))  # SSL4MIS names: frame01/frame02
    folder = Path(convert_acdc(str(tmp_path / "nifti"), 27, num_labeled=1))
    [fold] = read_json(folder / "splits_final.json")
    assert fold["train"] == frames(ACDC_TRAIN[:1], ("01", "12"))
    assert case_ids(folder / "labelsTs") == sorted(frames(ACDC_TEST, ("01", "12")))
    written = sitk.ReadImage(str(folder / "labelsTr" / "patient003_frame12.nii.gz"))
    assert np.allclose(written.GetSpacing(), spacing)


# ------------------------------------------------------------------------------------------------ labeled folder

@pytest.fixture
def labeled_pairs(tmp_path) -> Path:
    for k, case_id in enumerate(["hippo_001", "hippo_002", "hippo_005"]):
        image, label = random_case((5, 4, 3), 3)
        label[0, 0, 0] = 2  # every case holds the largest value
        for subfolder, array in (("images", image), ("labels", label)):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing((1.0, 1.0, 1.5))
            (tmp_path / "pairs" / subfolder).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(itk, str(tmp_path / "pairs" / subfolder / f"{case_id}.nii.gz"))
    return tmp_path / "pairs"


def test_labeled_folder_writes_nnunet_layout(labeled_pairs):
    folder = Path(convert_labeled_folder(str(labeled_pairs / "images"), str(labeled_pairs / "labels"), 4, "Hippo"))
    assert sorted(os.listdir(folder / "imagesTr")) == [f"hippo_00{k}_0000.nii.gz" for k in (1, 2, 5)]
    assert case_ids(folder / "labelsTr") == ["hippo_001", "hippo_002", "hippo_005"]
    dataset = read_json(folder / "dataset.json")
    assert dataset["labels"] == {"background": 0, "label_1": 1, "label_2": 2} and dataset["numTraining"] == 3
    assert not (folder / "splits_final.json").exists()  # nnunet_ssl_split makes it after planning
    named = Path(convert_labeled_folder(str(labeled_pairs / "images"), str(labeled_pairs / "labels"), 4, "Hippo",
                                        "T1", parse_labels("background=0,anterior=1,posterior=2"), overwrite=True))
    assert read_json(named / "dataset.json")["labels"] == {"background": 0, "anterior": 1, "posterior": 2}
    assert read_json(named / "dataset.json")["channel_names"] == {"0": "T1"}


def test_labeled_folder_bad_input(labeled_pairs):
    with pytest.raises(SSLConfigError, match=r"hippo_001: label values \[2\]"):
        convert_labeled_folder(str(labeled_pairs / "images"), str(labeled_pairs / "labels"), 4, "Hippo",
                               labels={"background": 0, "one": 1})
    os.remove(labeled_pairs / "labels" / "hippo_005.nii.gz")
    with pytest.raises(SSLConfigError, match="unpaired: hippo_005"):
        convert_labeled_folder(str(labeled_pairs / "images"), str(labeled_pairs / "labels"), 4, "Hippo")
    with pytest.raises(SSLConfigError, match="0, 1, ..., K"):
        parse_labels("background=0,tumor=2")


# --------------------------------------------------------------------------------- overwrite and command lines

def test_rerun_is_idempotent_and_different_datasets_need_overwrite(tmp_path, raw, la_h5, labeled_pairs):
    folder = Path(convert_la(str(tmp_path / "la"), 5, num_labeled=2))
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    convert_la(str(tmp_path / "la"), 5, num_labeled=2)
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert os.listdir(raw) == ["Dataset005_LA"]  # no staging folder left behind
    with pytest.raises(SSLConfigError, match="Dataset005_LA already holds a different dataset.*splits_final"):
        convert_la(str(tmp_path / "la"), 5, num_labeled=3)
    convert_la(str(tmp_path / "la"), 5, num_labeled=3, overwrite=True)
    assert read_json(folder / "splits_final.json")[0]["train"] == LA_TRAIN[:3]
    with pytest.raises(SSLConfigError, match="id 5 is already used by Dataset005_LA"):
        convert_labeled_folder(str(labeled_pairs / "images"), str(labeled_pairs / "labels"), 5, "Other")
    (raw / "Dataset007_Other").mkdir()
    with pytest.raises(SSLConfigError, match="id 7 is already used by Dataset007_Other"):
        convert_la(str(tmp_path / "la"), 7, num_labeled=2)
    convert_la(str(tmp_path / "la"), 7, num_labeled=2, overwrite=True)
    assert sorted(os.listdir(raw)) == ["Dataset005_LA", "Dataset007_LA"]


def test_failed_rerun_keeps_the_previous_dataset(tmp_path, raw, la_h5):
    folder = Path(convert_la(str(tmp_path / "la"), 5, num_labeled=2))
    write_h5(tmp_path / "la" / "2018LA_Seg_Training Set" / "TEST0" / "mri_norm2.h5", image=np.zeros((2, 2, 2)))
    with pytest.raises(SSLConfigError, match="TEST0"):
        convert_la(str(tmp_path / "la"), 5, num_labeled=2)
    assert os.listdir(raw) == ["Dataset005_LA"] and case_ids(folder / "labelsTs") == sorted(LA_TEST)


def test_command_lines(tmp_path, raw, la_h5, acdc_h5, labeled_pairs, capsys, monkeypatch):
    la.main(["-i", str(tmp_path / "la"), "-d", "11", "--num-labeled", "3"])
    assert read_json(raw / "Dataset011_LA" / "splits_final.json")[0]["train"] == LA_TRAIN[:3]
    acdc.main(["-i", str(tmp_path / "acdc"), "-d", "12", "--num-labeled", "1"])
    assert read_json(raw / "Dataset012_ACDC" / "splits_final.json")[0]["train"] == frames(ACDC_TRAIN[:1])
    labeled_folder.main(["-i", str(labeled_pairs / "images"), "-l", str(labeled_pairs / "labels"), "-d", "13",
                         "-n", "Hippo", "--labels", "background=0,anterior=1,posterior=2"])
    assert (raw / "Dataset013_Hippo" / "labelsTr" / "hippo_005.nii.gz").is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        acdc.main(["-i", str(tmp_path / "acdc"), "-d", "12", "--num-labeled", "99"])
    assert exit_info.value.code == 1 and capsys.readouterr().err.startswith("error: num_labeled=99")
    monkeypatch.delenv("nnUNet_raw")
    with pytest.raises(SystemExit):
        la.main(["-i", str(tmp_path / "la"), "-d", "11", "--num-labeled", "3"])
    assert "nnUNet_raw is not set" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ real data (optional)

def link_subset(source: Path, target: Path, names) -> None:
    for name in names:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).symlink_to(source / name)


def test_real_data_smoke(tmp_path):
    """The first two LA cases and one ACDC patient per list from the shared copy, if present."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    la_ids = (SHARED_DATA / "LA" / "train.list").read_text().split()[:2]
    link_subset(SHARED_DATA / "LA", tmp_path / "la", [f"2018LA_Seg_Training Set/{i}" for i in la_ids])
    write_list(tmp_path / "la" / "train.list", la_ids)
    write_list(tmp_path / "la" / "test.list", (SHARED_DATA / "LA" / "test.list").read_text().split()[:1])
    folder = Path(convert_la(str(tmp_path / "la"), 1, num_labeled=1, allow_missing=True))
    with h5py.File(SHARED_DATA / "LA" / "2018LA_Seg_Training Set" / la_ids[1] / "mri_norm2.h5") as f:
        shape = f["label"].shape
    label = sitk.ReadImage(str(folder / "labelsTr" / f"{la_ids[1]}.nii.gz"))
    assert label.GetSize() == shape and set(np.unique(sitk.GetArrayFromImage(label))) == {0, 1}

    acdc_ids = {name: (SHARED_DATA / "ACDC" / f"{name}.list").read_text().split()[:2]
                for name in ("train", "val", "test")}
    data = os.listdir(SHARED_DATA / "ACDC" / "data")
    link_subset(SHARED_DATA / "ACDC", tmp_path / "acdc",
                [f"data/{f}" for f in data if any(f.startswith(i + ".") or f.startswith(i + "_")
                                                  for ids in acdc_ids.values() for i in ids)])
    for name, ids in acdc_ids.items():
        write_list(tmp_path / "acdc" / f"{name}.list", ids)
    folder = Path(convert_acdc(str(tmp_path / "acdc"), 2, num_labeled=1))
    volume_id = acdc_ids["train"][0]
    restacked = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / f"{volume_id}.nii.gz")))
    slices = [f for f in data if f.startswith(volume_id + "_slice_")]
    assert restacked.shape[0] == len(slices)
    with h5py.File(SHARED_DATA / "ACDC" / "data" / f"{volume_id}_slice_{len(slices)}.h5") as f:
        np.testing.assert_array_equal(restacked[-1], f["label"][()])
