"""One rank of the CPU DDP run of tests/test_ddp.py: ``python ddp_worker.py OUT_DIR`` with torchrun's variables
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) set. Every trainer goes through nnU-Net's DDP code path on the
gloo backend for a few steps; this rank records what it drew, digests of its weights after every optimizer step,
what it logged, and rank 0 writes a checkpoint that both ranks resume under DDP and rank 0 resumes without it.

nnU-Net's trainer picks ``cuda:<rank>`` whenever DDP is initialised and hands ``device_ids`` to DDP; that device
choice is the one thing redirected here (to the CPU, with gloo). Everything else runs as nnUNetv2_train runs it.
"""
import hashlib
import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import load_json
from torch.nn.parallel import DistributedDataParallel

import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
import nnunet_ssl.trainers as trainers
from helpers import shrink_plans
from nnunet_ssl.errors import SSLConfigError

#: self-training splits nnU-Net's batch into labeled and pseudo-labeled patches (instead of adding an unlabeled
#: batch) and needs a teacher's pseudo-labels, which tests/test_ddp.py makes before starting the ranks
SELF_TRAINING = "nnUNetTrainerPseudoLabel"
#: the trainers with an unlabeled image stream
DDP_TRAINERS = [name for name in trainers.__all__ if name != SELF_TRAINING]
STEPS = 2
#: global batches: labeled (the plans' batch_size) and unlabeled (the trainers' class attribute)
LABELED, UNLABELED = 4, 5


def cpu_ddp(module, device_ids=None, **kwargs):
    """DDP as nnU-Net wraps the network, for CPU modules (which take no device_ids)."""
    return DistributedDataParallel(module, **kwargs)


def on_cpu(trainer_class):
    """The trainer with nnU-Net's DDP device choice (cuda:<rank>, grad scaler) redirected to the CPU."""
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        trainer_class.__init__(self, plans, configuration, fold, dataset_json, device)
        self.device, self.grad_scaler = torch.device("cpu"), None
    attributes = {"__init__": __init__}
    if trainer_class.__name__ != SELF_TRAINING:
        attributes["unlabeled_batch_size"] = UNLABELED
    if hasattr(trainer_class, "pretrain_fraction"):
        attributes["pretrain_fraction"] = 0  # BCP: the mean-teacher stage from the first step, so the teacher moves
    return type(trainer_class.__name__, (trainer_class,), attributes)


def tiny_plans():
    folder = os.path.join(os.environ["nnUNet_preprocessed"], "Dataset990_SSLDemo")
    plans = load_json(os.path.join(folder, "nnUNetPlans.json"))
    return shrink_plans(plans, "2d"), load_json(os.path.join(folder, "dataset.json"))


def make(trainer_class, labeled=LABELED):
    plans, dataset_json = tiny_plans()
    plans["configurations"]["2d"]["batch_size"] = labeled
    plans["continue_training"] = False
    trainer = on_cpu(trainer_class)(plans, "2d", 0, dataset_json, torch.device("cpu"))
    trainer.num_epochs, trainer.num_iterations_per_epoch = 2, STEPS
    return trainer


def digests(trainer) -> dict:
    """sha256 of the weights (parameters and buffers) per top-level part of the network (net1, net2, teacher...)."""
    parts = {}
    for key, value in trainer.network_module.state_dict().items():
        parts.setdefault(key.split(".")[0], hashlib.sha256()).update(value.detach().cpu().numpy().tobytes())
    return {part: h.hexdigest() for part, h in parts.items()}


def gather(value):
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def run_trainer(name: str, out_dir: str, rank: int) -> dict:
    trainer = make(getattr(trainers, name))
    trainer.on_train_start()
    record = {"ddp_wrapped": isinstance(trainer.network, DistributedDataParallel),
              "batch_size": trainer.batch_size, "batch_size_unlabeled": trainer.batch_size_unlabeled,
              "drawn": [], "digests": [digests(trainer)], "local_means": {}}
    trainer.on_train_epoch_start()
    outputs = []
    for _ in range(STEPS):
        batch = next(trainer.dataloader_train)
        record["drawn"].append([batch["data"].shape[0], batch["unlabeled"]["data"].shape[0]])
        outputs.append(trainer.train_step(batch))
        record["digests"].append(digests(trainer))
    record["local_means"] = {k: float(np.mean([o[k] for o in outputs])) for k in outputs[0]}
    trainer.on_train_epoch_end(outputs)
    record["logged"] = {k: float(trainer.logger.get_value(k, step=-1)) for k in outputs[0] if k != "loss"}
    record["logged"]["loss"] = float(trainer.logger.get_value("train_losses", step=-1))

    checkpoint = os.path.join(out_dir, f"{name}.pth")
    trainer.save_checkpoint(checkpoint)  # rank 0 writes it
    dist.barrier()
    if rank == 0:
        torch.save(batch, os.path.join(out_dir, f"{name}_batch.pt"))
    resumed = make(getattr(trainers, name))
    resumed.load_checkpoint(checkpoint)
    record["resumed_ddp_wrapped"] = isinstance(resumed.network, DistributedDataParallel)
    record["resumed_digest"] = digests(resumed)
    record["resumed_epoch"] = resumed.current_epoch
    resumed.network.train()
    resumed.train_step(batch)
    record["resumed_step_digest"] = digests(resumed)
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        if hasattr(loader, "_finish"):
            loader._finish()
    dist.barrier()
    return record


def resume_without_ddp(name: str, out_dir: str) -> dict:
    """Rank 0, after the process group is gone: the DDP checkpoint in a plain (single-process) trainer."""
    trainer = make(getattr(trainers, name))
    trainer.load_checkpoint(os.path.join(out_dir, f"{name}.pth"))
    trainer.network.train()
    result = {"ddp_wrapped": isinstance(trainer.network, DistributedDataParallel), "digest": digests(trainer)}
    trainer.train_step(torch.load(os.path.join(out_dir, f"{name}_batch.pt"), weights_only=False))
    result["step_digest"] = digests(trainer)
    return result


def uneven_labeled_batch_error() -> str:
    """nnU-Net's batch Dice all-gathers equal per-rank batches; a labeled batch that does not split evenly must
    stop with a message, not fail inside the all-gather."""
    try:
        make(trainers.nnUNetTrainerDMD, labeled=LABELED + 1).initialize()
    except SSLConfigError as error:
        return str(error)
    return ""


def main(out_dir: str) -> None:
    nnunet_trainer_module.DDP = cpu_ddp
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    records = {name: run_trainer(name, out_dir, rank) for name in DDP_TRAINERS + [SELF_TRAINING]}
    records["uneven_labeled_batch_error"] = uneven_labeled_batch_error()
    dist.destroy_process_group()
    if rank == 0:
        for name in DDP_TRAINERS + [SELF_TRAINING]:
            records[name]["without_ddp"] = resume_without_ddp(name, out_dir)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(records, f)


if __name__ == "__main__":
    main(sys.argv[1])
