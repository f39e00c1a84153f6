"""The base's two hooks for a new method, through the example in the README: ``build_ssl_network`` wires plans
U-Nets, ``compute_loss`` returns the loss and its terms, the base's ``train_step`` runs ``passes_per_batch`` passes
with one optimizer step each and logs the mean of every term over them."""
import os
import re
from types import SimpleNamespace

import pytest
import torch

from conftest import make_trainer
from nnunet_ssl.networks.containers import TwoNetworks
from nnunet_ssl.trainers import nnUNetTrainerMeanTeacher
from test_uadct import tiny_configuration

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.fixture(scope="module")
def readme_trainer():
    with open(README) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    example = next(b for b in blocks if "(nnUNetTrainerSSLBase)" in b)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    return namespace["nnUNetTrainerCrossConsistency"]


def stub(cls, network, passes):
    trainer = cls.__new__(cls)
    trainer.__dict__.update(
        network=network, device=torch.device("cpu"), grad_scaler=None, passes_per_batch=passes,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1), label_manager=SimpleNamespace(has_regions=False),
        loss=lambda output, target: sum((o - t).pow(2).mean() for o, t in zip(output, target)),
        current_epoch=0, step_in_epoch=0, num_epochs=2, num_iterations_per_epoch=2)
    return trainer


def test_readme_method_builds_two_plans_unets_and_predicts_one_logits_tensor(readme_trainer):
    # as nnU-Net's predictor builds it: without deep supervision
    network = readme_trainer.build_network_architecture(None, tiny_configuration(2), 1, 3, False)
    assert isinstance(network, TwoNetworks)
    first, second = (dict(net.named_parameters()) for net in (network.net1, network.net2))
    assert not torch.equal(first["encoder.stages.0.0.convs.0.conv.weight"],
                           second["encoder.stages.0.0.convs.0.conv.weight"]), "two initialisations"
    with torch.no_grad():
        logits = network.eval()(torch.randn(1, 1, 16, 16))
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 3, 16, 16)


def test_base_train_step_runs_the_passes_and_logs_means_over_them(readme_trainer):
    torch.manual_seed(0)
    network = readme_trainer.build_network_architecture(None, tiny_configuration(2), 1, 3, True).train()
    trainer = stub(readme_trainer, network, passes=2)
    steps, passes = [], []
    trainer.optimizer.register_step_post_hook(lambda optimizer, args, kwargs: steps.append(1))
    compute_loss = trainer.compute_loss

    def recording(*args):
        total, terms = compute_loss(*args)
        passes.append((trainer.pass_in_step, float(total.detach()), {k: float(v) for k, v in terms.items()}))
        return total, terms

    trainer.compute_loss = recording
    target = [torch.rand(1, 3, 16, 16), torch.rand(1, 3, 8, 8)]
    result = trainer.train_step({"data": torch.randn(1, 1, 16, 16), "target": target,
                                 "unlabeled": {"data": torch.randn(1, 1, 16, 16)}})

    assert len(steps) == 2 and [p[0] for p in passes] == [0, 1] and trainer.step_in_epoch == 1
    assert passes[0][1] != passes[1][1], "the second pass sees the weights after the first step"
    assert set(result) == {"loss", "sup", "cons"} and all(isinstance(v, float) for v in result.values())
    assert result["loss"] == pytest.approx((passes[0][1] + passes[1][1]) / 2)
    assert result["cons"] == pytest.approx((passes[0][2]["cons"] + passes[1][2]["cons"]) / 2)


class CheckpointEvery3(nnUNetTrainerMeanTeacher):
    save_every_epochs = 3


def test_checkpoint_latest_frequency_is_a_class_attribute_that_nnunet_uses(ssl_env, monkeypatch):
    assert make_trainer(ssl_env, monkeypatch, nnUNetTrainerMeanTeacher, "2d").save_every == 10
    assert make_trainer(ssl_env, monkeypatch, CheckpointEvery3, "2d").save_every == 3
