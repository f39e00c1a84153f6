"""Every trainer's training steps on fixed inputs give the losses, parameters and predictions recorded before the
building-blocks refactor (issue 14), so moving code into blocks and hooks cannot change what a method computes.

Each trainer is built as ``nnUNetv2_train`` builds it (the session dataset's 2d plans, CPU), from seed 0; two
``train_step`` calls on one seeded batch (labeled, unlabeled, a strong view and pseudo-labels) record the total loss
of each step, a checksum of the parameters after the second step (it moves if any gradient or the EMA update
changes) and the sum of the eval-mode prediction (the inference choice). The fixture
``tests/data/loss_regression.json`` was written by running this module with ``NNUNET_SSL_RECORD_LOSSES=1`` at the
commit it names; a change that is meant to alter a method's arithmetic re-records it and says so in its commit.
"""
import json
import os
import subprocess

import pytest
import torch

from conftest import make_trainer

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "loss_regression.json")
TRAINERS = ("nnUNetTrainerCMEMS", "nnUNetTrainerDMD", "nnUNetTrainerDMD_paper", "nnUNetTrainerLeFeD",
            "nnUNetTrainerLeFeD_paper", "nnUNetTrainerMeanTeacher", "nnUNetTrainerPseudoLabel", "nnUNetTrainerUADCT",
            "nnUNetTrainerUADCT_paper")
BATCH = 2


def fixed_batch(trainer) -> dict:
    """A seeded labeled + unlabeled batch in the trainer's patch size and deep-supervision scales."""
    generator = torch.Generator().manual_seed(1)
    patch = list(trainer.configuration_manager.patch_size)
    classes = trainer.label_manager.num_segmentation_heads

    def images():
        return torch.randn((BATCH, 1, *patch), generator=generator)

    def deep_supervision_targets(labels):
        return [torch.nn.functional.interpolate(labels.float(), scale_factor=tuple(scale), mode="nearest-exact")
                for scale in trainer._get_deep_supervision_scales()]

    labels = torch.randint(0, classes, (BATCH, 1, *patch), generator=generator)
    pseudo = torch.randint(0, classes + 1, (BATCH, 1, *patch), generator=generator)  # classes = the ignore label
    return {"data": images(), "target": deep_supervision_targets(labels),
            "unlabeled": {"data": images(), "image_strong": images(), "target": deep_supervision_targets(pseudo)}}


def parameter_checksum(network) -> float:
    """A weighted sum of all parameters (weights differ per tensor, so swapped or shifted updates show)."""
    return float(sum((i + 1) * p.detach().double().sum() for i, p in enumerate(network.parameters())))


def measure(trainer) -> dict:
    torch.manual_seed(0)
    trainer.initialize()
    trainer.current_epoch = trainer.num_epochs // 2  # ramp-ups well above 0, so the unlabeled terms count
    trainer.on_train_epoch_start = None  # not called: no log file, no lr schedule step
    trainer.step_in_epoch = 0
    trainer.network.train()
    batch = fixed_batch(trainer)
    torch.manual_seed(2)
    losses = [trainer.train_step(batch)["loss"] for _ in range(2)]
    trainer.network.eval()
    with torch.no_grad():
        prediction = trainer.network(batch["data"])
    prediction = prediction[0] if isinstance(prediction, (list, tuple)) else prediction
    return {"losses": losses, "parameters": parameter_checksum(trainer.network),
            "prediction": float(prediction.double().sum())}


def read_fixture() -> dict:
    if not os.path.isfile(FIXTURE):
        return {"trainers": {}}
    with open(FIXTURE) as f:
        return json.load(f)


def write_entry(name: str, values: dict) -> None:
    """Record mode: store ``name``'s values with the commit and torch version they were measured with."""
    fixture = read_fixture()
    fixture["trainers"][name] = values
    os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
    fixture["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                       cwd=os.path.dirname(FIXTURE)).stdout.strip()
    fixture["torch"] = torch.__version__
    with open(FIXTURE, "w") as f:
        json.dump(fixture, f, indent=1)


@pytest.mark.parametrize("name", TRAINERS)
def test_training_steps_match_the_recorded_values(ssl_env, monkeypatch, name):
    import nnunet_ssl.trainers as trainers

    torch.set_num_threads(1)  # sums in one order, as when recorded
    measured = measure(make_trainer(ssl_env, monkeypatch, getattr(trainers, name), configuration="2d"))
    if os.environ.get("NNUNET_SSL_RECORD_LOSSES") == "1":
        write_entry(name, measured)
    expected = read_fixture()["trainers"][name]
    assert measured["losses"] == pytest.approx(expected["losses"], rel=1e-4, abs=1e-6), name
    assert measured["parameters"] == pytest.approx(expected["parameters"], rel=1e-6), name
    assert measured["prediction"] == pytest.approx(expected["prediction"], rel=1e-4, abs=1e-3), name
