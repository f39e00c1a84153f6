"""Metrics against hand-computed values, and the nnunet_ssl_evaluate command on a tiny folder of NIfTI files."""
import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from medpy.metric.binary import asd, hd95

from nnunet_ssl.evaluation.metrics import METRICS, compute_case_metrics, main

ANISOTROPIC = (1.0, 1.0, 3.0)  # numpy axis order: axis 2 is the thick one


def test_dice_and_iou_per_label():
    pred = np.array([[1, 1, 1, 0, 2, 2]])
    ref = np.array([[0, 1, 1, 1, 2, 0]])
    metrics = compute_case_metrics(pred, ref, [1, 2], (1.0, 1.0))
    # label 1: 2 shared voxels, 1 false positive, 1 false negative; label 2: 1 shared, 1 false positive
    assert metrics[1]["Dice"] == pytest.approx(4 / 6) and metrics[1]["IoU"] == pytest.approx(2 / 4)
    assert metrics[2]["Dice"] == pytest.approx(2 / 3) and metrics[2]["IoU"] == pytest.approx(1 / 2)


@pytest.mark.parametrize("axis, spacing_along_axis", [(0, 1.0), (2, 3.0)])
def test_two_cubes_offset_along_one_axis(axis, spacing_along_axis):
    # 2x2x2 cubes (every voxel is a surface voxel) 3 voxels apart: half of each cube's voxels are 2 voxels from the
    # other cube, half are 3. ASD = mean = 2.5 voxels; HD95 = 95th percentile of the 16 distances = 3 voxels.
    pred, ref = np.zeros((10, 10, 10), np.uint8), np.zeros((10, 10, 10), np.uint8)
    pred[2:4, 2:4, 2:4] = 1
    ref_slices = [slice(2, 4)] * 3
    ref_slices[axis] = slice(5, 7)
    ref[tuple(ref_slices)] = 1
    metrics = compute_case_metrics(pred, ref, [1], ANISOTROPIC)[1]
    assert metrics["HD95_vox"] == pytest.approx(3.0) and metrics["ASD_vox"] == pytest.approx(2.5)
    assert metrics["HD95"] == pytest.approx(3.0 * spacing_along_axis)
    assert metrics["ASD"] == pytest.approx(2.5 * spacing_along_axis)
    assert metrics["Dice"] == 0.0


@pytest.mark.parametrize("axis, spacing_along_axis", [(0, 1.0), (2, 3.0)])
def test_single_voxel_against_shifted_voxel(axis, spacing_along_axis):
    pred, ref = np.zeros((6, 6, 6)), np.zeros((6, 6, 6))
    pred[1, 1, 1] = 1
    shifted = [1, 1, 1]
    shifted[axis] = 4
    ref[tuple(shifted)] = 1
    metrics = compute_case_metrics(pred, ref, [1], ANISOTROPIC)[1]
    assert metrics["HD95_vox"] == metrics["ASD_vox"] == pytest.approx(3.0)
    assert metrics["HD95"] == metrics["ASD"] == pytest.approx(3.0 * spacing_along_axis)


def test_asd_is_directed_from_prediction_to_reference():
    pred, ref = np.zeros((1, 8)), np.zeros((1, 8))
    pred[0, [1, 5]] = 1  # one voxel on the reference, one 4 voxels away
    ref[0, 1] = 1
    assert compute_case_metrics(pred, ref, [1], (1.0, 1.0))[1]["ASD_vox"] == pytest.approx(2.0)
    assert compute_case_metrics(ref, pred, [1], (1.0, 1.0))[1]["ASD_vox"] == pytest.approx(0.0)


def test_cropping_to_the_masks_keeps_medpys_values():
    # scattered masks in a sub-block that touches the array border on some sides (where surface extraction treats
    # the outside as background) and leaves background around it on the others, so that the crop is a real one
    rng = np.random.default_rng(0)
    pred, ref = np.zeros((12, 14, 9), bool), np.zeros((12, 14, 9), bool)
    pred[:8, 3:, 2:7] = rng.random((8, 11, 5)) < 0.2
    ref[:8, 3:, 2:7] = rng.random((8, 11, 5)) < 0.3
    metrics = compute_case_metrics(pred.astype(np.uint8), ref.astype(np.uint8), [1], ANISOTROPIC)[1]
    assert metrics["HD95"] == pytest.approx(hd95(pred, ref, voxelspacing=ANISOTROPIC))
    assert metrics["ASD"] == pytest.approx(asd(pred, ref, voxelspacing=ANISOTROPIC))
    assert metrics["ASD_vox"] == pytest.approx(asd(pred, ref))


@pytest.mark.parametrize("pred_voxels, ref_voxels, expected_overlap, distances_defined", [
    (0, 3, 0.0, False),  # missed structure
    (3, 0, 0.0, False),  # structure predicted where there is none
    (0, 0, 1.0, True),   # correctly absent: Dice 1, distances 0
])
def test_empty_masks(pred_voxels, ref_voxels, expected_overlap, distances_defined):
    pred, ref = np.zeros((4, 4, 4)), np.zeros((4, 4, 4))
    pred[0, 0, :pred_voxels] = 1
    ref[2, 2, :ref_voxels] = 1
    metrics = compute_case_metrics(pred, ref, [1], ANISOTROPIC)[1]
    assert metrics["Dice"] == metrics["IoU"] == expected_overlap
    for name in ("HD95", "ASD", "HD95_vox", "ASD_vox"):
        assert (metrics[name] == 0.0) if distances_defined else math.isnan(metrics[name])


def _write(folder, name, array, spacing_xyz=(1.0, 1.0, 3.0)):
    folder.mkdir(exist_ok=True)
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing_xyz)
    sitk.WriteImage(image, str(folder / name))


def _tiny_dataset(tmp_path):
    """Three cases with labels 1 and 2 on arrays in (z, y, x) order, written with 3 mm between slices (z)."""
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    for index in range(3):
        ref = np.zeros((6, 5, 5))
        ref[1, 1, 1] = 1
        ref[4, 3, 3] = 2
        pred = ref.copy()
        if index == 0:  # label 1 shifted by 2 slices: 6 mm, 2 voxels
            pred[1, 1, 1], pred[3, 1, 1] = 0, 1
        if index == 1:  # label 2 missed
            pred[4, 3, 3] = 0
        _write(ref_dir, f"case_{index}.nii.gz", ref)
        _write(pred_dir, f"case_{index}.nii.gz", pred)
    return pred_dir, ref_dir


def test_command_line_writes_summary_json_and_csv(tmp_path, capsys):
    pred_dir, ref_dir = _tiny_dataset(tmp_path)
    output = tmp_path / "out" / "metrics.json"
    assert main([str(pred_dir), str(ref_dir), "-o", str(output), "-np", "2"]) == 0

    text = output.read_text()
    assert "NaN" not in text and "Infinity" not in text
    summary = json.loads(text)
    assert set(summary) == {"foreground_mean", "mean", "std", "n_undefined", "metric_per_case"}
    assert set(summary["mean"]) == set(summary["std"]) == {"1", "2"}
    assert set(summary["foreground_mean"]) == set(METRICS)
    assert summary["n_undefined"] == {"1": 0, "2": 1}

    first, second, _ = summary["metric_per_case"]
    assert first["prediction_file"].endswith("case_0.nii.gz") and first["reference_file"].startswith(str(ref_dir))
    assert first["metrics"]["1"]["HD95"] == pytest.approx(6.0) and first["metrics"]["1"]["HD95_vox"] == 2.0
    assert second["metrics"]["2"]["Dice"] == 0.0 and second["metrics"]["2"]["HD95"] is None

    # label 2: Dice 1, 0, 1; distances defined (0) on two cases, so their mean is 0 and not None
    assert summary["mean"]["2"]["Dice"] == pytest.approx(2 / 3) and summary["mean"]["2"]["HD95"] == 0.0
    assert summary["std"]["1"]["HD95"] == pytest.approx(np.std([6.0, 0.0, 0.0]))

    with open(output.with_suffix(".csv")) as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 3 * 2
    assert list(rows[0]) == ["case", "label", *METRICS]
    assert (rows[3]["case"], rows[3]["label"], rows[3]["HD95"]) == ("case_1", "2", "")
    assert "label 2" in capsys.readouterr().out


def test_labels_from_option_and_from_dataset_json(tmp_path):
    pred_dir, ref_dir = _tiny_dataset(tmp_path)
    assert main([str(pred_dir), str(ref_dir), "-o", str(tmp_path / "l.json"), "-l", "2", "-np", "1"]) == 0
    assert set(json.loads((tmp_path / "l.json").read_text())["mean"]) == {"2"}

    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2, "c": 3}}))
    assert main([str(pred_dir), str(ref_dir), "-o", str(tmp_path / "d.json"), "-djfile", str(dataset_json),
                 "-np", "1"]) == 0
    assert set(json.loads((tmp_path / "d.json").read_text())["mean"]) == {"1", "2", "3"}


def test_missing_prediction_or_reference_is_an_error_naming_the_file(tmp_path, capsys):
    pred_dir, ref_dir = _tiny_dataset(tmp_path)
    (pred_dir / "case_2.nii.gz").unlink()
    assert main([str(pred_dir), str(ref_dir), "-np", "1"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "case_2.nii.gz" in error and "--chill" in error
    assert main([str(pred_dir), str(ref_dir), "-np", "1", "--chill"]) == 0
    assert len(json.loads((pred_dir / "ssl_summary.json").read_text())["metric_per_case"]) == 2

    _write(pred_dir, "stray.nii.gz", np.zeros((6, 5, 5)))
    assert main([str(pred_dir), str(ref_dir), "-np", "1", "--chill"]) == 1
    assert "stray.nii.gz" in capsys.readouterr().err


def _squares(shift):
    """A 7x7 square and the same square shifted by ``shift`` pixels along x, on a 20x24 canvas."""
    ref, pred = np.zeros((20, 24), np.uint8), np.zeros((20, 24), np.uint8)
    ref[5:12, 5:12] = 1
    pred[5:12, 5 + shift:12 + shift] = 1
    return pred, ref


def test_png_segmentations_are_read_as_nnunet_reads_them_and_measured_in_pixels(tmp_path, capsys):
    from skimage import io

    (tmp_path / "pred").mkdir(), (tmp_path / "ref").mkdir()
    pred, ref = _squares(3)
    io.imsave(tmp_path / "pred" / "img_1.png", pred, check_contrast=False)
    io.imsave(tmp_path / "ref" / "img_1.png", ref, check_contrast=False)
    assert main([str(tmp_path / "pred"), str(tmp_path / "ref"), "-o", str(tmp_path / "s.json"), "-np", "1"]) == 0
    metrics = json.loads((tmp_path / "s.json").read_text())["metric_per_case"][0]["metrics"]["1"]
    assert set(metrics) == {"Dice", "IoU", "HD95_vox", "ASD_vox"}, "a PNG has no spacing, so no distances in mm"
    assert metrics["Dice"] == pytest.approx(2 * 28 / 98)
    # measured in 2D: a 3D surface extraction over the single slice would call every pixel a surface pixel
    assert metrics["HD95_vox"] == pytest.approx(hd95(pred, ref)) and metrics["ASD_vox"] == pytest.approx(asd(pred, ref))
    assert metrics["ASD_vox"] != pytest.approx(asd(pred[None], ref[None]))
    assert "pixels only" in capsys.readouterr().out


def test_single_slice_nifti_is_measured_in_2d_with_its_spacing(tmp_path):
    pred, ref = _squares(2)
    _write(tmp_path / "pred", "c.nii.gz", pred[None], spacing_xyz=(0.5, 2.0, 5.0))
    _write(tmp_path / "ref", "c.nii.gz", ref[None], spacing_xyz=(0.5, 2.0, 5.0))
    assert main([str(tmp_path / "pred"), str(tmp_path / "ref"), "-o", str(tmp_path / "s.json"), "-np", "1"]) == 0
    metrics = json.loads((tmp_path / "s.json").read_text())["metric_per_case"][0]["metrics"]["1"]
    assert metrics["HD95"] == pytest.approx(hd95(pred, ref, voxelspacing=(2.0, 0.5)))
    assert metrics["ASD_vox"] == pytest.approx(asd(pred, ref))
