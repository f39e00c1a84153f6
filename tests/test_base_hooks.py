"""The base's hooks for a new method, through the example in the README (``build_ssl_network``, ``compute_loss``
with its pass context, ``after_optimizer_step``, ``inference``, ``settings_checks``), the base's ``train_step``
(``passes_per_batch`` passes with one optimizer step each, the mean of every term over them logged), and the
settings tables of every trainer."""
import os
import re

import pytest
import torch

import nnunet_ssl.trainers as trainers
from conftest import make_trainer
from helpers import tiny_configuration, trainer_stub
from nnunet_ssl.blocks.mixing import CutMix
from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.networks.containers import StudentTeacher
from nnunet_ssl.trainers import nnUNetTrainerMeanTeacher
from nnunet_ssl.trainers.base import nnUNetTrainerSSLBase

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
TRAINERS = [getattr(trainers, name) for name in trainers.__all__]


@pytest.fixture(scope="module")
def readme_trainer():
    with open(README) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    example = next(b for b in blocks if "(nnUNetTrainerSSLBase)" in b)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    return namespace["nnUNetTrainerConfidentTeacher"]


def test_readme_method_builds_a_student_and_teacher_that_predict_one_logits_tensor(readme_trainer):
    # as nnU-Net's predictor builds it: without deep supervision
    network = readme_trainer.build_network_architecture(None, tiny_configuration(2), 1, 3, False)
    assert isinstance(network, StudentTeacher)
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        network.teacher.decoder.seg_layers[-1].bias.add_(1.0)  # tell the teacher's prediction apart
        logits = network.eval()(x)
        assert isinstance(logits, torch.Tensor) and logits.shape == (1, 3, 16, 16)
        assert torch.equal(logits, network.student(x))
        teacher = type("Second", (readme_trainer,), {"inference": "second"})
        network.inference = teacher.build_network_architecture(None, tiny_configuration(2), 1, 3, False).inference
        assert torch.equal(network(x), network.teacher(x))


def test_base_train_step_runs_the_passes_steps_after_each_and_logs_means_over_them(readme_trainer):
    torch.manual_seed(0)
    network = readme_trainer.build_network_architecture(None, tiny_configuration(2), 1, 3, True).train()
    trainer = trainer_stub(readme_trainer, network, passes_per_batch=2, confidence_threshold=0.0)
    trainer.step_in_epoch = 1  # global step 1: EMA decay 1 - 1/2
    passes, steps = [], []
    compute_loss, after_optimizer_step = trainer.compute_loss, trainer.after_optimizer_step

    def recording_loss(data, target, data_unlabeled, batch, context):
        total, terms = compute_loss(data, target, data_unlabeled, batch, context)
        passes.append((context.index, context.count, float(total.detach()), {k: float(v) for k, v in terms.items()}))
        context.carry[context.index] = True
        return total, terms

    def recording_step(context):
        teacher, student = ([p.detach().clone() for p in net.parameters()] for net in (network.teacher,
                                                                                      network.student))
        after_optimizer_step(context)
        steps.append((dict(context.carry), teacher, student, [p.detach().clone() for p in network.teacher.parameters()]))

    trainer.compute_loss, trainer.after_optimizer_step = recording_loss, recording_step
    seg = torch.randint(0, 3, (2, 1, 16, 16)).float()
    result = trainer.train_step({"data": torch.randn(2, 1, 16, 16), "target": [seg, seg[:, :, ::2, ::2]],
                                 "unlabeled": {"data": torch.randn(2, 1, 16, 16)}})

    assert [p[:2] for p in passes] == [(0, 2), (1, 2)] and trainer.step_in_epoch == 2
    assert [s[0] for s in steps] == [{0: True}, {0: True, 1: True}], "one carry per batch, after each step"
    for _, teacher_before, student_after, teacher_after in steps:  # teacher = (teacher + student) / 2
        assert all(torch.allclose(a, (t + s) / 2) for t, s, a in zip(teacher_before, student_after, teacher_after))
    assert passes[0][2] != passes[1][2], "the second pass sees the weights after the first step"
    assert set(result) == {"loss", "sup", "cons", "confident"} and all(isinstance(v, float) for v in result.values())
    assert result["loss"] == pytest.approx((passes[0][2] + passes[1][2]) / 2)
    assert result["cons"] == pytest.approx((passes[0][3]["cons"] + passes[1][3]["cons"]) / 2) and result["cons"] > 0


# ---- settings ----------------------------------------------------------------------------------------------------
def settings_table(cls) -> dict:
    table = {}
    for klass in reversed(cls.__mro__):
        table.update(vars(klass).get("settings_checks", {}))
    return table


def own_settings(cls) -> set:
    """The class attributes the nnunet-ssl classes of ``cls``'s hierarchy define (not nnU-Net's, not methods)."""
    return {name for klass in cls.__mro__ if klass.__module__.startswith("nnunet_ssl")
            for name, value in vars(klass).items() if not name.startswith("_") and not callable(value)
            and not isinstance(value, (classmethod, staticmethod, property))
            and name not in ("settings_checks", "renamed_settings")}


@pytest.mark.parametrize("cls", TRAINERS, ids=lambda cls: cls.__name__)
def test_every_setting_is_checked_and_the_defaults_pass(cls):
    assert own_settings(cls) <= set(settings_table(cls)), "settings without a check"
    cls.check_settings()
    for name in settings_table(cls):
        variant = type(cls.__name__ + "Variant", (cls,), {name: object()})
        with pytest.raises(SSLConfigError, match=rf"{cls.__name__}Variant\.{name} must be .*, got <object"):
            variant.check_settings()


@pytest.mark.parametrize("cls, attributes, allowed", [
    (trainers.nnUNetTrainerUADCT, {"mc_samples": 0}, "an integer >= 1"),
    (trainers.nnUNetTrainerUADCT, {"consistency_loss": "kl"}, "one of 'ce', 'mse'"),
    (trainers.nnUNetTrainerDMD, {"temperature": 0}, "a number > 0"),
    (trainers.nnUNetTrainerCMEMS, {"cutmix": CutMix(volume=(0.4, 0.02))}, "a CutMix with probability in"),
    (trainers.nnUNetTrainerUniMatch, {"cutmix": CutMix(probability=2)}, "a CutMix with probability in"),
    (trainers.nnUNetTrainerCMEMS, {"feature_dropout": 1.0}, r"a number in \[0, 1\)"),
    (trainers.nnUNetTrainerMeanTeacher, {"inference": "teacher"}, "one of 'first', 'second', 'mean'"),
    (trainers.nnUNetTrainerLeFeD, {"rampup_fraction": -1}, "a number >= 0"),
    (trainers.nnUNetTrainerPseudoLabel, {"inference": "mean"}, "one of 'first'"),
    (trainers.nnUNetTrainerPseudoLabel, {"rampup_fraction": 1.0}, "one of 0"),
    (trainers.nnUNetTrainerUAMT, {"mc_dropout_rate": 1.0}, r"a number in \[0, 1\)"),
    (trainers.nnUNetTrainerCPS, {"cps_on_labeled": 1}, "one of True, False"),
])
def test_out_of_range_values_are_refused_naming_the_allowed_ones(cls, attributes, allowed):
    variant = type("Variant", (cls,), attributes)
    with pytest.raises(SSLConfigError, match=rf"Variant\.{next(iter(attributes))} must be {allowed}"):
        variant.check_settings()
    with pytest.raises(SSLConfigError, match=allowed):  # nnU-Net's predictor builds the network without a trainer
        variant.build_network_architecture(None, tiny_configuration(2), 1, 3, False)


@pytest.mark.parametrize("old", ["inference_network", "inference_decoders", "inference_mode"])
def test_former_inference_names_are_refused_naming_the_new_one(old):
    variant = type("Variant", (trainers.nnUNetTrainerDMD,), {old: "mean"})
    with pytest.raises(SSLConfigError, match=rf"Variant\.{old} is no longer a setting: set inference instead"):
        variant.check_settings()


@pytest.mark.parametrize("old", ["cutmix_probability", "cutmix_volume"])
def test_former_cutmix_names_are_refused_naming_the_new_one(old):
    variant = type("Variant", (trainers.nnUNetTrainerCMEMS,), {old: 1.0})
    with pytest.raises(SSLConfigError, match=rf"Variant\.{old} is no longer a setting: set cutmix instead"):
        variant.check_settings()


class MeanTeacherEvery3(nnUNetTrainerMeanTeacher):
    save_every_epochs = 3


class MeanTeacherBadDecay(nnUNetTrainerMeanTeacher):
    ema_decay = 1.5


def test_settings_are_checked_when_the_trainer_is_made_and_checkpoint_frequency_reaches_nnunet(ssl_env, monkeypatch):
    assert make_trainer(ssl_env, monkeypatch, nnUNetTrainerMeanTeacher, "2d").save_every == 10
    assert make_trainer(ssl_env, monkeypatch, MeanTeacherEvery3, "2d").save_every == 3
    with pytest.raises(SSLConfigError, match=r"MeanTeacherBadDecay\.ema_decay must be a number in \[0, 1\], got 1.5"):
        make_trainer(ssl_env, monkeypatch, MeanTeacherBadDecay, "2d")


def test_global_step_counts_batches_over_epochs():
    trainer = trainer_stub(nnUNetTrainerSSLBase, torch.nn.Linear(1, 1), epoch=3, iterations=5)
    trainer.step_in_epoch = 2
    assert trainer.global_step == 17
