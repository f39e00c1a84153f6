"""nnU-Net's multi-GPU path (``nnUNetv2_train ... -num_gpus N``: DistributedDataParallel), run on the CPU with two
gloo processes (tests/ddp_worker.py) for every SSL trainer with an unlabeled stream: the batch split per rank,
identical weights on all ranks after every optimizer step (second networks and EMA teachers included), logged terms
gathered over ranks, and the checkpoint of rank 0 resumed under DDP and without it."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from ddp_worker import DDP_TRAINERS

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_worker.py")
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_records(ssl_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = dict(ssl_env, nnUNet_n_proc_DA="0", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), WORLD_SIZE=str(WORLD))
    ranks = [subprocess.Popen([sys.executable, WORKER, str(out)], env=dict(env, RANK=str(rank)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(WORLD)]
    logs = [rank.communicate(timeout=600)[0] for rank in ranks]
    for rank, (process, log) in enumerate(zip(ranks, logs)):
        assert process.returncode == 0, f"rank {rank} exited {process.returncode}:\n{log[-6000:]}"
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(WORLD)]


@pytest.mark.parametrize("name", DDP_TRAINERS)
def test_trainer_under_ddp(ddp_records, name):
    ranks = [records[name] for records in ddp_records]
    rank0 = ranks[0]
    assert all(r["ddp_wrapped"] and r["resumed_ddp_wrapped"] for r in ranks)

    # each rank draws its share: global labeled 4 -> 2 + 2, global unlabeled 5 -> 3 + 2 (nnU-Net's split)
    assert [r["batch_size"] for r in ranks] == [2, 2]
    assert [r["batch_size_unlabeled"] for r in ranks] == [3, 2]
    assert [r["drawn"] for r in ranks] == [[[2, 3]] * 2, [[2, 2]] * 2]

    # identical weights on every rank after every optimizer step, and every part of the network trained
    parts = set(rank0["digests"][0])
    assert len(parts) == 2, parts  # both networks, both decoders, or student and EMA teacher
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
