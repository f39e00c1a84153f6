"""Mixed precision and torch.compile on the CPU, where torch allows them (nnU-Net itself uses both only on CUDA):
every trainer's loss code under ``torch.autocast("cpu", dtype=torch.bfloat16)``, and one training step of every
SSL network compiled by inductor, against the same step in float32 / eager mode."""
import copy

import pytest
import torch
from torch._dynamo.utils import counters

import nnunet_ssl.trainers as trainers
from conftest import make_trainer
from helpers import shrink_plans
from nnunet_ssl.networks.feature_perturbation import ChannelDropout, UniformFeatureNoise
from nnunet_ssl.trainers.base import PassContext


#: every trainer but self-training, whose loss and network are nnU-Net's own (a plain U-Net, Dice+CE) and whose
#: loader needs a teacher's pseudo-labels
TRAINERS = [name for name in trainers.__all__ if name != "nnUNetTrainerPseudoLabel"]


def tiny_2d_plans(plans):
    """The plans' three stages with one conv each and 4, 8, 16 features (inductor's compile time grows with the
    graph; nnU-Net's deep supervision needs three stages), labeled batch 2."""
    shrink_plans(plans, "2d")["configurations"]["2d"]["batch_size"] = 2


@pytest.fixture(scope="module")
def trainer_and_batch(ssl_env):
    """``trainer_and_batch(name)``: an initialised trainer of that class on the tiny plans, and one batch of its
    training loader (nnU-Net's augmentation, labeled and unlabeled parts)."""
    built = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        def build(name):
            if name not in built:
                trainer = make_trainer(ssl_env, monkeypatch, getattr(trainers, name), "2d", plans_edit=tiny_2d_plans)
                trainer.on_train_start()
                trainer.on_train_epoch_start()
                built[name] = trainer, next(trainer.dataloader_train)
            return built[name]
        yield build


def flat_gradient(network) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in network.parameters() if p.grad is not None])


@pytest.mark.parametrize("name", TRAINERS)
def test_loss_under_bfloat16_autocast_matches_float32(trainer_and_batch, name):
    trainer, batch = trainer_and_batch(name)
    data, target = trainer.to_device(batch["data"]), trainer.to_device(batch["target"])
    unlabeled = trainer.to_device(batch["unlabeled"]["data"])
    results = {}
    for precision in ("float32", "bfloat16"):
        torch.manual_seed(0)
        trainer.network.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            loss, terms = trainer.compute_loss(data, target, unlabeled, batch, PassContext())
        loss.backward()
        results[precision] = loss, terms, flat_gradient(trainer.network)
    (loss32, terms32, grad32), (loss16, terms16, grad16) = results["float32"], results["bfloat16"]
    assert loss16.dtype == torch.float32, "the loss is reduced in float32"
    assert torch.isfinite(loss16) and torch.isfinite(grad16).all()
    assert float(loss16.detach()) == pytest.approx(float(loss32.detach()), rel=0.05)
    for term, value in terms32.items():
        assert float(terms16[term]) == pytest.approx(float(value), rel=0.1, abs=0.02), term
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.95
    trainer.network.zero_grad(set_to_none=True)


def without_random_effect(network):
    """Sets the rates of the random layers inside the network (UA-DCT's Monte Carlo dropout, CMEMS's feature
    dropout and noise) to 0: the random draws stay in the graph, but the result no longer depends on them, so a
    compiled step (whose kernels may draw in another order) can be compared with the eager one."""
    for module in network.modules():
        if isinstance(module, (torch.nn.modules.dropout._DropoutNd, ChannelDropout)):
            module.p = 0.0
        elif isinstance(module, UniformFeatureNoise):
            module.r = 0.0


# about 4 minutes for all on 2 cores with an empty inductor cache (11-47 s per network; networks of the same
# wiring as an earlier one, the _paper variants and DMD after CPS, reuse its compiled kernels: about 1 s)
@pytest.mark.parametrize("name", TRAINERS)
def test_inductor_compiled_network_trains_like_eager(trainer_and_batch, name):
    trainer, batch = trainer_and_batch(name)
    eager_network = trainer.network
    without_random_effect(eager_network)
    start = copy.deepcopy(eager_network.state_dict()), copy.deepcopy(trainer.optimizer.state_dict())
    results = {}
    # dynamo keeps code compiled for an earlier test's network of the same class and, by default, does not guard on
    # module hooks (UA-DCT's Monte Carlo dropout is one): start each test from an empty cache
    torch._dynamo.reset()
    counters.clear()
    for mode in ("eager", "compiled"):
        eager_network.load_state_dict(start[0])
        trainer.optimizer.load_state_dict(start[1])
        trainer.step_in_epoch = 0
        trainer.network = torch.compile(eager_network) if mode == "compiled" else eager_network
        torch.manual_seed(0)
        logged = trainer.train_step(batch)
        results[mode] = logged, {k: v.clone() for k, v in eager_network.state_dict().items()}
    trainer.network = eager_network
    assert counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
    (logged_e, weights_e), (logged_c, weights_c) = results["eager"], results["compiled"]
    assert logged_c == pytest.approx(logged_e, rel=1e-3, abs=1e-5)
    changed = [k for k in weights_e if not torch.equal(weights_e[k], start[0][k])]
    assert changed, "the step changed no weight"
    for key in weights_e:
        torch.testing.assert_close(weights_c[key], weights_e[key], rtol=1e-3, atol=1e-5, msg=key)
