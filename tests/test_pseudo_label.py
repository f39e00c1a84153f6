"""Self-training: ``nnunet_ssl_pseudolabel`` and ``nnUNetTrainerPseudoLabel``.

The end-to-end tests follow the README ("Self-training") on a split whose unlabeled cases have their label files
deleted: a teacher (nnUNetTrainer), nnunet_ssl_pseudolabel, the student; in 2d through nnUNetv2_train with a second
round (the student as teacher), nnUNetv2_predict and nnunet_ssl_evaluate.
"""
import json
import os
import shutil

import blosc2
import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_pickle
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from conftest import bin_path, clone_dataset, make_trainer, run_cli
from e2e import output_folder, train

from nnunet_ssl.data.pseudo_labels import (CONFIDENCE_SCALE, ConfidenceToIgnore, PseudoLabeledCases, cases_done,
                                           confidence, pseudo_label_folder, read_manifest)
from nnunet_ssl.data.strong_views import StrongIntensity
from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.evaluation.metrics import main as evaluate_main
from nnunet_ssl.pseudolabel import (check_model_fits_dataset, export_pseudo_label, main as pseudolabel_main,
                                    unlabeled_cases_of_fold)
from nnunet_ssl.splits import make_ssl_splits, write_splits
from nnunet_ssl.trainers import nnUNetTrainerPseudoLabel
from nnunet_ssl.trainers.base import PassContext
from nnunet_ssl.trainers.pseudo_label import pseudo_patches_per_batch

DATASET_ID = 996


# ---- storage and transforms ----------------------------------------------------------------------------------
def test_confidence_by_hand():
    probabilities = torch.tensor([[0.7, 0.1], [0.2, 0.3], [0.1, 0.6]])  # (classes, voxels)
    assert torch.allclose(confidence(probabilities, False), torch.tensor([0.7, 0.6]))
    sigmoids = torch.tensor([[0.9, 0.4], [0.2, 0.5]])  # (regions, voxels): min over regions of max(p, 1 - p)
    assert torch.allclose(confidence(sigmoids, True), torch.tensor([0.8, 0.5]))


def test_confidence_to_ignore_by_hand():
    label = torch.tensor([[[0, 1, 2, -1]]], dtype=torch.int16)
    conf = torch.tensor([[[0.95, 0.5, 0.9, -1 / CONFIDENCE_SCALE]]]) * CONFIDENCE_SCALE
    image = torch.zeros(1, 1, 4)
    out = ConfidenceToIgnore(0.9, 7)(image=image, segmentation=torch.cat((label, conf.to(torch.int16))))
    assert out["image"] is image
    assert out["segmentation"].tolist() == [[[0, 7, 2, -1]]]  # 0.9 is kept, padding stays -1
    assert ConfidenceToIgnore(0.0, 7)(segmentation=torch.cat((label, conf.to(torch.int16))))["segmentation"] \
        .tolist() == [[[0, 1, 2, -1]]]


def test_export_writes_label_confidence_and_locations_by_hand(ssl_env, monkeypatch, tmp_path):
    """Softmax of hand-made logits: labels, confidence x 10000 and class locations; -1 outside the nonzero mask."""
    label_manager = make_trainer(ssl_env, monkeypatch, nnUNetTrainerPseudoLabel, "2d").label_manager
    logits = torch.zeros(3, 1, 1, 4)
    logits[1, 0, 0, 1] = np.log(4.0)  # softmax (1, 4, 1) / 6 -> label 1, confidence 0.6667
    logits[2, 0, 0, 2] = 10.0
    outside = np.array([[[False, False, False, True]]])
    export_pseudo_label("case", logits, outside, label_manager, [1, 4], str(tmp_path))
    pair = blosc2.open(str(tmp_path / "case_pseudo.b2nd"), mode="r")[:]
    properties = load_pickle(str(tmp_path / "case.pkl"))
    assert pair.tolist() == [[[[0, 1, 2, -1]]], [[[3333, 6667, 9999, 3333]]]]
    assert [list(map(list, properties["class_locations"][k])) for k in (1, 2)] == [[[0, 0, 0, 1]], [[0, 0, 0, 2]]]


def test_pseudo_patches_per_batch():
    assert [pseudo_patches_per_batch(b, s) for b, s in ((2, 0.5), (2, 0.1), (2, 0.9), (4, 0.25), (5, 0.5))] == \
        [1, 1, 1, 1, 2]
    with pytest.raises(SSLConfigError, match="batch size of at least 2"):
        pseudo_patches_per_batch(1, 0.5)
    for share in (0.0, 1.0):  # refused with the trainer's settings, naming the attribute
        variant = type("Variant", (nnUNetTrainerPseudoLabel,), {"pseudo_label_share": share})
        with pytest.raises(SSLConfigError, match=r"Variant\.pseudo_label_share must be a number in \(0, 1\)"):
            variant.check_settings()


# ---- end to end ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def st_env(ssl_env):
    """Dataset996: Dataset990 with its imagesUnlabeled scans and a one-fold split of 2 labeled, 3 unlabeled and
    1 validation case, the unlabeled cases' label files deleted (raw, gt_segmentations, preprocessed)."""
    name = clone_dataset(ssl_env, DATASET_ID, "SelfTraining")
    source = os.path.join(ssl_env["nnUNet_preprocessed"], "Dataset990_SSLDemo")
    target = os.path.join(ssl_env["nnUNet_preprocessed"], name)
    for configuration in ("2d", "3d_fullres"):
        shutil.copytree(os.path.join(source, f"nnUNetPlans_{configuration}_unlabeled"),
                        os.path.join(target, f"nnUNetPlans_{configuration}_unlabeled"))
    cases = sorted(f[:-len(".nii.gz")] for f in os.listdir(os.path.join(target, "gt_segmentations")))
    split = make_ssl_splits(cases, num_labeled=2, folds=1)
    write_splits(os.path.join(target, "splits_final.json"), split)
    for case in split[0]["unlabeled"]:
        for path in (os.path.join(target, "nnUNetPlans_2d", case + "_seg.b2nd"),
                     os.path.join(target, "nnUNetPlans_3d_fullres", case + "_seg.b2nd"),
                     os.path.join(target, "gt_segmentations", case + ".nii.gz"),
                     os.path.join(ssl_env["nnUNet_raw"], name, "labelsTr", case + ".nii.gz")):
            os.remove(path)
    return dict(env=ssl_env, name=name, folder=target, split=split[0])


def pseudolabel(st_env, monkeypatch, *args):
    """``nnunet_ssl_pseudolabel`` in this process (its command line and all), exporting in-process unless asked."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(var, st_env["env"][var])
    pseudolabel_main(["-d", str(DATASET_ID), "-device", "cpu", "--disable_tta", "--disable_progress_bar", "-nps", "0",
                      *args])


def train_in_process(st_env, monkeypatch, trainer_class, configuration):
    """A 1-epoch training of 2 steps (``trainer.run_training()``, as nnUNetv2_train runs it, without the final
    validation), saving checkpoint_final.pth in the model folder."""
    trainer = make_trainer(st_env["env"], monkeypatch, trainer_class, configuration, dataset=st_env["name"])
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 2, 1
    trainer.run_training()
    return trainer


@pytest.fixture(scope="module")
def teachers(st_env):
    """Round one's teacher, nnUNetTrainer on the labeled cases (trained in this process, to keep the test short),
    and nnunet_ssl_pseudolabel with it, for 2d and 3d_fullres."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        for configuration in ("2d", "3d_fullres"):
            train_in_process(st_env, monkeypatch, nnUNetTrainer, configuration)
            pseudolabel(st_env, monkeypatch, "-c", configuration, "-f", "0", "-tr", "nnUNetTrainer")
    return st_env


def check_pseudo_labels(st_env, configuration, teacher):
    folder = pseudo_label_folder(st_env["folder"], "nnUNetPlans", configuration, 0)
    manifest = read_manifest(folder)
    assert manifest["teacher"]["trainer"] == teacher and manifest["teacher"]["folds"] == [0]
    assert manifest["split"] == {"train": st_env["split"]["train"], "val": st_env["split"]["val"]}
    unlabeled_scans = [f"unl_{i:03d}" for i in range(4)]
    assert cases_done(folder) == sorted(st_env["split"]["unlabeled"] + unlabeled_scans)
    images = {c: os.path.join(st_env["folder"], f"nnUNetPlans_{configuration}") for c in st_env["split"]["unlabeled"]}
    images.update({c: os.path.join(st_env["folder"], f"nnUNetPlans_{configuration}_unlabeled")
                   for c in unlabeled_scans})
    for case in cases_done(folder):
        image, pair, _, properties = PseudoLabeledCases(images, folder).load_case(case)
        pair = np.asarray(pair[:])
        assert pair.shape == (2, *image.shape[1:])
        assert set(np.unique(pair[0])) <= {0, 1, 2}
        assert pair[1].min() >= CONFIDENCE_SCALE / 3 - 1 and pair[1].max() <= CONFIDENCE_SCALE  # a max of 3 classes
        for label, voxels in properties["class_locations"].items():
            assert all(pair[0][tuple(v[1:])] == label for v in voxels[:50])
    return folder


def test_self_training_3d_fullres(teachers, monkeypatch):
    """Round one in 3d_fullres: the pseudo-labels, and the student (in this process, to keep the test short; the 2d
    test below runs nnU-Net's commands)."""
    check_pseudo_labels(teachers, "3d_fullres", "nnUNetTrainer")
    student = train_in_process(teachers, monkeypatch, nnUNetTrainerPseudoLabel, "3d_fullres")
    assert student.pseudo_label_manifest["teacher"]["trainer"] == "nnUNetTrainer"
    assert student.batch_size + student.batch_size_unlabeled == 2  # the plans' batch size
    assert os.path.isfile(os.path.join(student.output_folder, "checkpoint_final.pth"))


def test_self_training_rounds_end_to_end_2d(teachers, monkeypatch, tmp_path):
    """Round one's student through nnUNetv2_train, nnUNetv2_predict and nnunet_ssl_evaluate, as in the README; then
    round two: the student teaches a new student, under its own trainer name (trained in this process)."""
    st_env, configuration = teachers, "2d"
    env = st_env["env"]
    check_pseudo_labels(st_env, configuration, "nnUNetTrainer")
    student = "nnUNetTrainerPseudoLabel_tiny"
    log = train(env, student, configuration, 1, dataset_id=DATASET_ID).stdout
    assert "by teacher nnUNetTrainer (plans nnUNetPlans" in log
    assert "3 from splits_final.json, 4 from the imagesUnlabeled folder" in log
    assert os.path.isfile(os.path.join(output_folder(env, student, configuration, DATASET_ID), "validation",
                                       "summary.json"))
    predictions = tmp_path / "pred"
    raw = os.path.join(env["nnUNet_raw"], st_env["name"])
    run_cli([bin_path("nnUNetv2_predict"), "-i", os.path.join(raw, "imagesTs"), "-o", str(predictions), "-d",
             str(DATASET_ID), "-c", configuration, "-f", "0", "-tr", student, "-device", "cpu", "-npp", "1", "-nps",
             "1", "--disable_progress_bar", "--disable_tta"], env)
    assert evaluate_main([str(predictions), os.path.join(raw, "labelsTs"), "-o", str(predictions / "scores.json"),
                          "-np", "1"]) == 0
    assert len(json.loads((predictions / "scores.json").read_text())["metric_per_case"]) == 2

    pseudolabel(st_env, monkeypatch, "-c", configuration, "-f", "0", "-tr", student, "--overwrite")
    check_pseudo_labels(st_env, configuration, student)
    with pytest.raises(SSLConfigError, match="the teacher is this very trainer"):
        make_trainer(env, monkeypatch, type(student, (nnUNetTrainerPseudoLabel,), {}), configuration,
                     dataset=st_env["name"]).read_pseudo_label_manifest()

    class nnUNetTrainerPseudoLabelRound2(nnUNetTrainerPseudoLabel):
        """The README's one-line subclass for round two."""

    round_two = train_in_process(st_env, monkeypatch, nnUNetTrainerPseudoLabelRound2, configuration)
    assert round_two.pseudo_label_manifest["teacher"]["trainer"] == student
    assert os.path.isfile(os.path.join(round_two.output_folder, "checkpoint_final.pth"))


# ---- bad input (on the teachers' models and pseudo-labels) -------------------------------------------------
def run_pseudolabel_error(st_env, monkeypatch, *args) -> str:
    with pytest.raises(SystemExit) as stop:
        pseudolabel(st_env, monkeypatch, "-c", "2d", *args)
    assert stop.value.code != 0
    return str(stop.value.code)


def test_pseudolabel_missing_model_fold_or_checkpoint(teachers, monkeypatch):
    st_env = teachers
    message = run_pseudolabel_error(st_env, monkeypatch, "-f", "0", "-tr", "nnUNetTrainerDMD")
    assert "no trained model in" in message and "nnUNetTrainerDMD__nnUNetPlans__2d" in message
    message = run_pseudolabel_error(st_env, monkeypatch, "-f", "3", "-tr", "nnUNetTrainer")
    assert os.path.join("fold_3", "checkpoint_final.pth") in message
    message = run_pseudolabel_error(st_env, monkeypatch, "-f", "0", "-tr", "nnUNetTrainer",
                                    "-chk", "checkpoint_nope.pth")
    assert os.path.join("fold_0", "checkpoint_nope.pth") in message
    message = run_pseudolabel_error(st_env, monkeypatch, "-f", "0", "-tr", "nnUNetTrainer",
                                    "-p", "nnUNetPlansX")
    assert "nnUNetPlansX.json" in message
    message = run_pseudolabel_error(st_env, monkeypatch, "-f", "0", "-tr", "nnUNetTrainer",
                                    "-student_fold", "all")
    assert "fold 'all'" in message and "splits_final.json" in message


def test_pseudolabel_model_of_another_dataset_or_plans(teachers, monkeypatch):
    st_env = teachers
    teacher = output_folder(st_env["env"], "nnUNetTrainer", "2d", DATASET_ID)
    copy = os.path.join(os.path.dirname(os.path.dirname(teacher)), "nnUNetTrainerCopy__nnUNetPlans__2d")
    shutil.copytree(os.path.dirname(teacher), copy)
    plans_file = os.path.join(copy, "plans.json")
    plans = json.loads(open(plans_file).read())
    for edit, expected in ((lambda p: p.update(dataset_name="Dataset990_SSLDemo"), "is for dataset Dataset990"),
                           (lambda p: p["configurations"]["2d"].update(spacing=[2.0, 2.0]),
                            "trained with another '2d' preprocessing"),
                           (lambda p: p["configurations"]["2d"].update(batch_size=7), None)):
        edited = json.loads(json.dumps(plans))
        edit(edited)
        with open(plans_file, "w") as f:
            json.dump(edited, f)
        if expected is None:  # a trainer variant's batch size does not matter
            check_model_fits_dataset(copy, st_env["name"], st_env["folder"], "nnUNetPlans", json.loads(
                open(os.path.join(st_env["folder"], "nnUNetPlans.json")).read()), "2d")
            continue
        message = run_pseudolabel_error(st_env, monkeypatch, "-f", "0", "-tr", "nnUNetTrainerCopy")
        assert expected in message and plans_file in message


def test_pseudolabel_overlapping_split(tmp_path):
    (tmp_path / "images").mkdir()
    for case in ("a", "b", "c"):
        (tmp_path / "images" / f"{case}.b2nd").touch()
    (tmp_path / "splits_final.json").write_text(json.dumps([{"train": ["a", "b"], "val": ["c"], "unlabeled": ["b"]}]))
    with pytest.raises(SSLConfigError, match="splits_final.json, fold 0: 1 unlabeled case.*also in 'train'"):
        unlabeled_cases_of_fold(str(tmp_path), str(tmp_path / "images"), 0)


def test_student_refuses_pseudo_labels_of_other_plans_or_missing_cases(teachers, monkeypatch, capsys):
    st_env = teachers
    env = st_env["env"]
    other_plans = make_trainer(env, monkeypatch, nnUNetTrainerPseudoLabel, "2d", dataset=st_env["name"],
                               plans_edit=lambda p: p.update(plans_name="nnUNetPlansOther"))
    with pytest.raises(SSLConfigError, match="nnUNetPlans__2d.fold_0.* were made with other plans") as error:
        other_plans.read_pseudo_label_manifest()
    assert "nnunet_ssl_pseudolabel -d Dataset996_SelfTraining -c 2d -f 0 -tr TEACHER -p nnUNetPlansOther" \
        in str(error.value)
    shutil.copytree(pseudo_label_folder(st_env["folder"], "nnUNetPlans", "2d", 0),
                    pseudo_label_folder(st_env["folder"], "nnUNetPlansOther", "2d", 0))
    with pytest.raises(SSLConfigError, match="made with plans 'nnUNetPlans', this training uses 'nnUNetPlansOther'"):
        other_plans.read_pseudo_label_manifest()

    folder = pseudo_label_folder(st_env["folder"], "nnUNetPlans", "3d_fullres", 0)
    removed = st_env["split"]["unlabeled"][0]
    os.remove(os.path.join(folder, removed + ".pkl"))
    student = make_trainer(env, monkeypatch, nnUNetTrainerPseudoLabel, "3d_fullres", dataset=st_env["name"])
    with pytest.raises(SSLConfigError, match=f"1 of 7 unlabeled cases have no pseudo-label .*\\({removed}\\)"):
        student.get_unlabeled_dataset(st_env["split"]["train"] + st_env["split"]["val"])
    # a second run resumes: only the missing case is predicted (exported by a worker process)
    pseudolabel(st_env, monkeypatch, "-c", "3d_fullres", "-f", "0", "-tr", "nnUNetTrainer", "-nps", "1")
    assert "7 unlabeled cases, 6 already pseudo-labeled" in capsys.readouterr().out
    assert removed in cases_done(folder)


def test_student_batch_share_and_confidence_threshold(teachers, monkeypatch):
    """3 of 4 patches pseudo-labeled; with a threshold above every confidence every pseudo-label voxel inside the
    image is ignored, and only labeled cases feed the labeled stream (with the Noisy Student noise on). The same
    patches (same seed) drawn without a threshold show where the image is: its foreground becomes the ignore label,
    and voxels outside the image (padding, label 0 either way) are the only ones left at 0."""
    class Student(nnUNetTrainerPseudoLabel):
        pseudo_label_share = 0.75
        student_augmentation = StrongIntensity()

    def batch_of_four(plans):
        plans["configurations"]["2d"]["batch_size"] = 4

    st_env = teachers
    trainer = make_trainer(st_env["env"], monkeypatch, Student, "2d", dataset=st_env["name"], plans_edit=batch_of_four)
    trainer.initialize()
    assert (trainer.batch_size, trainer.batch_size_unlabeled) == (1, 3)

    def batch_with_threshold(threshold):
        trainer.confidence_threshold = threshold
        dl_tr, _ = trainer.build_dataloaders()
        np.random.seed(7)
        torch.manual_seed(7)
        return dl_tr.generate_train_batch()

    kept = batch_with_threshold(0.0)["unlabeled"]["target"][0]
    batch = batch_with_threshold(1.01)  # above every confidence; a class attribute this high is refused
    assert set(batch["keys"]) <= set(st_env["split"]["train"])
    assert len(batch["unlabeled"]["keys"]) == 3 and len(batch["unlabeled"]["target"]) == len(batch["target"])
    ignored = batch["unlabeled"]["target"][0]
    assert ignored.shape[0] == 3 and ignored.shape == kept.shape
    assert set(ignored.unique().tolist()) <= {0, 3} and (kept > 0).any()
    assert (ignored[kept > 0] == 3).all()
    assert (ignored == 3).float().mean() > 0.2
    loss, terms = trainer.compute_loss(batch["data"], batch["target"], batch["unlabeled"]["data"], batch,
                                       PassContext())
    assert torch.isfinite(loss)
    assert terms["pseudo_ignored"] == pytest.approx((ignored == 3).float().mean().item())


def test_student_starts_from_the_teachers_weights_if_asked(teachers, monkeypatch, tmp_path):
    class FromTeacher(nnUNetTrainerPseudoLabel):
        init_from_teacher = True

    trainer = make_trainer(teachers["env"], monkeypatch, FromTeacher, "3d_fullres", dataset=teachers["name"])
    trainer.initialize()
    teacher = read_manifest(trainer.pseudo_label_folder)["teacher"]
    weights = torch.load(os.path.join(teacher["model_folder"], "fold_0", "checkpoint_final.pth"),
                         weights_only=False)["network_weights"]
    state = trainer.network_module.state_dict()
    assert state.keys() == weights.keys() and all(torch.equal(state[k], v) for k, v in weights.items())

    (tmp_path / "fold_0").mkdir()  # a teacher whose network holds more than one plain U-Net
    torch.save({"network_weights": {"net1." + k: v for k, v in weights.items()}},
               tmp_path / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(SSLConfigError, match="is not this trainer's plain U-Net"):
        trainer.load_teacher_weights(dict(teacher, model_folder=str(tmp_path)))
