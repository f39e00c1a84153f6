"""The end-to-end cycle every trainer goes through, exactly as a user runs it: ``nnUNetv2_train`` (with nnU-Net's
final validation), ``nnUNetv2_train --c`` one epoch further, ``nnUNetv2_predict`` on the test images, and
``nnunet_ssl_evaluate`` of the predictions."""
import json
import os

import torch

from conftest import bin_path, run_cli



def dataset_name(env, dataset_id):
    prefix = f"Dataset{dataset_id:03d}_"
    return next(d for d in os.listdir(env["nnUNet_raw"]) if d.startswith(prefix))


def output_folder(env, trainer, configuration, dataset_id=990, fold=0):
    return os.path.join(env["nnUNet_results"], dataset_name(env, dataset_id), f"{trainer}__nnUNetPlans__{configuration}",
                        f"fold_{fold}")


def train(env, trainer, configuration, epochs, *extra, dataset_id=990, fold="0", check=True):
    return run_cli([bin_path("nnUNetv2_train"), str(dataset_id), configuration, fold, "-tr", trainer, "-device",
                    "cpu", *extra], dict(env, NNUNET_SSL_TEST_EPOCHS=str(epochs)), check=check)


def load_checkpoint(env, trainer, configuration, name="checkpoint_final.pth", dataset_id=990):
    return torch.load(os.path.join(output_folder(env, trainer, configuration, dataset_id), name), map_location="cpu",
                      weights_only=False)


def train_resume_predict(env, trainer, configuration, tmp_path, dataset_id=990):
    """The whole cycle for ``<trainer>_tiny`` on fold 0: a 2-epoch training that crashes after epoch 0, its
    resumption with ``--c`` (which must start at epoch 1 and run nnU-Net's final validation), prediction of the
    test images and their evaluation. Returns the final checkpoint."""
    name = trainer + "_tiny"
    folder = output_folder(env, name, configuration, dataset_id)
    crashed = run_cli([bin_path("nnUNetv2_train"), str(dataset_id), configuration, "0", "-tr", name, "-device", "cpu"],
                      dict(env, NNUNET_SSL_TEST_EPOCHS="2", NNUNET_SSL_TEST_CRASH_AFTER_EPOCH="0"), check=False)
    assert crashed.returncode == 3, crashed.stdout[-3000:] + crashed.stderr[-3000:]
    assert os.path.isfile(os.path.join(folder, "checkpoint_latest.pth"))
    assert not os.path.isfile(os.path.join(folder, "checkpoint_final.pth"))

    resumed = train(env, name, configuration, 2, "--c", dataset_id=dataset_id)
    assert "Epoch 1" in resumed.stdout and "Epoch 0" not in resumed.stdout, "--c did not resume at epoch 1"
    assert os.path.isfile(os.path.join(folder, "validation", "summary.json")), "final validation did not run"
    assert os.path.isfile(os.path.join(folder, "progress.png"))
    checkpoint = load_checkpoint(env, name, configuration, dataset_id=dataset_id)
    assert checkpoint["trainer_name"] == name and checkpoint["current_epoch"] == 2
    for key, values in checkpoint["logging"].items():
        assert len(values) == 2, f"log '{key}' has {len(values)} entries after 2 epochs"

    predictions = tmp_path / f"pred_{trainer}_{configuration}_{dataset_id}"
    raw = os.path.join(env["nnUNet_raw"], dataset_name(env, dataset_id))
    run_cli([bin_path("nnUNetv2_predict"), "-i", os.path.join(raw, "imagesTs"), "-o", str(predictions), "-d",
             str(dataset_id), "-c", configuration, "-f", "0", "-tr", name, "-device", "cpu", "-npp", "1", "-nps", "1",
             "--disable_progress_bar"], env)
    test_cases = sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(os.path.join(raw, "imagesTs")))
    assert sorted(f[:-len(".nii.gz")] for f in os.listdir(predictions) if f.endswith(".nii.gz")) == test_cases
    scores = predictions / "scores.json"
    run_cli([bin_path("nnunet_ssl_evaluate"), str(predictions), os.path.join(raw, "labelsTs"), "-o", str(scores),
             "-np", "1"], env)
    summary = json.loads(scores.read_text())
    assert len(summary["metric_per_case"]) == len(test_cases)
    assert 0.0 <= summary["foreground_mean"]["Dice"] <= 1.0
    return checkpoint
