"""nnU-Net's multi-GPU path (``nnUNetv2_train ... -num_gpus N``: DistributedDataParallel), run on the CPU with two
gloo processes (tests/ddp_worker.py) for every trainer: the batch split per rank, identical weights on all ranks
after every optimizer step (second networks and EMA teachers included), logged terms gathered over ranks, and the
checkpoint of rank 0 resumed under DDP and without it. Self-training gets its pseudo-labels from a teacher trained
for two steps before the ranks start."""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from conftest import make_trainer
from ddp_worker import DDP_TRAINERS, SELF_TRAINING
from helpers import shrink_plans
from nnunet_ssl.pseudolabel import make_pseudo_labels

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_worker.py")
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_teacher_pseudo_labels(env) -> None:
    """nnUNetTrainer (on the tiny plans) trained for 2 steps on fold 0, and its pseudo-labels of the unlabeled scans
    for a fold-0 student."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        teacher = make_trainer(env, monkeypatch, nnUNetTrainer, "2d", plans_edit=lambda p: shrink_plans(p, "2d"))
        teacher.num_epochs, teacher.num_iterations_per_epoch, teacher.num_val_iterations_per_epoch = 1, 2, 1
        teacher.run_training()
        make_pseudo_labels("990", "2d", [0], "nnUNetTrainer", device="cpu", use_mirroring=False, progress=False,
                           num_export_processes=0)


@pytest.fixture(scope="module")
def ddp_records(ssl_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    # a copy of the session's preprocessed dataset and an own results folder: the pseudo-labels made here must not
    # meet those of other tests (the session's folders are shared by all workers)
    env = dict(ssl_env, nnUNet_preprocessed=str(out / "preprocessed"), nnUNet_results=str(out / "results"))
    shutil.copytree(os.path.join(ssl_env["nnUNet_preprocessed"], "Dataset990_SSLDemo"),
                    os.path.join(env["nnUNet_preprocessed"], "Dataset990_SSLDemo"),
                    ignore=lambda folder, names: [n for n in names if n == "pseudolabels"])
    make_teacher_pseudo_labels(env)
    env.update(nnUNet_n_proc_DA="0", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               WORLD_SIZE=str(WORLD))
    ranks = [subprocess.Popen([sys.executable, WORKER, str(out)], env=dict(env, RANK=str(rank)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(WORLD)]
    logs = [rank.communicate(timeout=600)[0] for rank in ranks]
    for rank, (process, log) in enumerate(zip(ranks, logs)):
        assert process.returncode == 0, f"rank {rank} exited {process.returncode}:\n{log[-6000:]}"
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(WORLD)]


@pytest.mark.parametrize("name", DDP_TRAINERS)
def test_trainer_under_ddp(ddp_records, name):
    ranks = [records[name] for records in ddp_records]
    # each rank draws its share: global labeled 4 -> 2 + 2, global unlabeled 5 -> 3 + 2 (nnU-Net's split)
    assert [r["batch_size"] for r in ranks] == [2, 2]
    assert [r["batch_size_unlabeled"] for r in ranks] == [3, 2]
    assert [r["drawn"] for r in ranks] == [[[2, 3]] * 2, [[2, 2]] * 2]
    parts = set(ranks[0]["digests"][0])
    assert len(parts) == 2, parts  # both networks, both decoders, or student and EMA teacher
    check_ranks_agree_and_resume(ranks)


def test_self_training_under_ddp(ddp_records):
    ranks = [records[SELF_TRAINING] for records in ddp_records]
    # nnU-Net's global batch 4 -> 2 per rank, each rank's 2 split into 1 labeled + 1 pseudo-labeled patch (share 0.5)
    assert [r["batch_size"] for r in ranks] == [1, 1]
    assert [r["batch_size_unlabeled"] for r in ranks] == [1, 1]
    assert [r["drawn"] for r in ranks] == [[[1, 1]] * 2] * 2
    check_ranks_agree_and_resume(ranks)


def check_ranks_agree_and_resume(ranks) -> None:
    rank0 = ranks[0]
    assert all(r["ddp_wrapped"] and r["resumed_ddp_wrapped"] for r in ranks)

    # identical weights on every rank after every optimizer step, and every part of the network trained
    parts = set(rank0["digests"][0])
    for step, digests in enumerate(zip(*(r["digests"] for r in ranks))):
        assert all(d == digests[0] for d in digests), f"ranks differ after step {step}"
        if step:
            before = rank0["digests"][step - 1]
            assert all(digests[0][part] != before[part] for part in parts), f"a part did not change in step {step}"

    # logged terms: the mean over ranks of each rank's epoch mean, the same value on every rank
    assert all(r["logged"] == rank0["logged"] for r in ranks)
    assert set(rank0["logged"]) == set(rank0["local_means"])
    for term, value in rank0["logged"].items():
        assert value == pytest.approx(np.mean([r["local_means"][term] for r in ranks]), rel=1e-6), term
    assert ranks[0]["local_means"]["loss"] != ranks[1]["local_means"]["loss"], "ranks saw different data"

    # rank 0's checkpoint: resumed under DDP (both ranks: the saved weights, epoch 1, identical after a step) ...
    assert all(r["resumed_digest"] == rank0["digests"][-1] and r["resumed_epoch"] == 1 for r in ranks)
    assert all(r["resumed_step_digest"] == rank0["resumed_step_digest"] for r in ranks)
    assert rank0["resumed_step_digest"] != rank0["digests"][-1]
    # ... and by a single process without DDP
    single = rank0["without_ddp"]
    assert not single["ddp_wrapped"] and single["digest"] == rank0["digests"][-1]
    assert single["step_digest"] != single["digest"]


def test_uneven_labeled_batch_with_batch_dice_stops_with_a_message(ddp_records):
    for records in ddp_records:
        assert "batch size 5 does not split evenly over 2 GPUs" in records["uneven_labeled_batch_error"]
