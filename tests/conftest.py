"""Shared fixtures: one tiny synthetic dataset, planned and preprocessed (2d and 3d_fullres) once per session, and
an ``nnUNet_extTrainer`` folder of short-schedule variants of every nnunet-ssl trainer (``<Trainer>_tiny``).

The variants sit in a user's own ext folder on purpose: that also checks that nnunet-ssl's auto-registration keeps
a user's ``nnUNet_extTrainer`` entries working.
"""
import os
import subprocess
import sys

import pytest

from nnunet_ssl.cpu_environment import with_cpu_environment

# the small-CPU settings for the nnU-Net commands the end-to-end tests start (passive OpenMP waiting: spinning
# threads make small convolutions several times slower next to nnU-Net's augmentation workers)
os.environ.update(with_cpu_environment(os.environ))

HOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_trainer_hooks.py") + ":EndToEndTestHooks"


def write_tiny_trainers(folder) -> None:
    """``<Trainer>_tiny`` for every nnunet-ssl trainer and nnUNetTrainer (the supervised teacher of
    self-training): 2 iterations per epoch, 1 validation iteration, a checkpoint every epoch, no mirroring, and the
    end-to-end tests' hooks (tiny_trainer_hooks.py)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunet_ssl.trainers as trainers
    from nnunet_ssl.variants import NoMirroring, short_schedule, write_variants_module

    bases = [getattr(trainers, name) for name in trainers.__all__] + [nnUNetTrainer]
    write_variants_module(str(folder), "ssl_test_trainers", [
        short_schedule(base, base.__name__ + "_tiny", iterations=2, val_iterations=1, save_every=1,
                       mixins=(HOOKS, NoMirroring)) for base in bases],
        "Short-schedule variants of every nnunet-ssl trainer, for the end-to-end tests (written by conftest.py).")


def run_cli(args, env, timeout=600, check=True):
    """Run a console command; on failure show its output in the assertion message."""
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}"
                             f"\n--- stderr ---\n{result.stderr[-6000:]}")
    return result


def bin_path(name):
    return os.path.join(os.path.dirname(sys.executable), name)


@pytest.fixture(scope="session")
def ssl_env(tmp_path_factory):
    """Environment with nnU-Net folders holding Dataset990 planned and preprocessed for 2d and 3d_fullres,
    its imagesUnlabeled preprocessed for both, and the tiny trainers on nnUNet_extTrainer. Built once and shared by
    all pytest-xdist workers (the first one builds it under a file lock)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()  # under xdist, one folder per worker inside this session's folder
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "nnunet"
    env = dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_extTrainer=str(root / "ext"), nnUNet_n_proc_DA="2",
               nnUNet_def_n_proc="1", nnUNet_compile="f", PYTHONWARNINGS="ignore")
    with FileLock(str(root) + ".lock"):
        if not (root / "ready").exists():
            build_session_dataset(root, env)
            (root / "ready").touch()
    return env


def build_session_dataset(root, env):
    from nnunet_ssl.synthetic import make_dataset

    write_tiny_trainers(root / "ext")
    make_dataset(env["nnUNet_raw"], dataset_id=990, num_labeled=6, num_unlabeled=4, num_test=2, shape=(16, 24, 20))
    run_cli([bin_path("nnUNetv2_plan_and_preprocess"), "-d", "990", "-c", "2d", "3d_fullres", "-np", "2",
             "--verify_dataset_integrity"], env)
    run_cli([bin_path("nnunet_ssl_preprocess_unlabeled"), "-d", "990", "-c", "2d", "3d_fullres", "-np", "2"], env)

def clone_dataset(env, new_id: int, name: str) -> str:
    """Copy the session's preprocessed Dataset990 (without its unlabeled folders, split and pseudo-labels) to a new
    id, for tests that write their own splits_final.json. Returns the new dataset name."""
    import json
    import shutil

    new_name = f"Dataset{new_id:03d}_{name}"
    taken = [d for d in os.listdir(env["nnUNet_raw"]) if d.startswith(f"Dataset{new_id:03d}_")]
    assert not taken, f"dataset id {new_id} is already used by {taken} in this session: give each test its own id"
    source = os.path.join(env["nnUNet_preprocessed"], "Dataset990_SSLDemo")
    target = os.path.join(env["nnUNet_preprocessed"], new_name)
    shutil.copytree(source, target, ignore=lambda folder, names: [n for n in names if n.endswith("_unlabeled")
                                                                   or n in ("splits_final.json", "pseudolabels")])
    plans_file = os.path.join(target, "nnUNetPlans.json")
    with open(plans_file) as f:
        plans = json.load(f)
    plans["dataset_name"] = new_name
    with open(plans_file, "w") as f:
        json.dump(plans, f)
    shutil.copytree(os.path.join(env["nnUNet_raw"], "Dataset990_SSLDemo"), os.path.join(env["nnUNet_raw"], new_name))
    return new_name


def make_trainer(env, monkeypatch, trainer_class, configuration="3d_fullres", fold=0,
                 dataset="Dataset990_SSLDemo", plans_edit=None):
    """A trainer instance built in this process, on CPU, as nnUNetv2_train would build it."""
    import json

    import torch

    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA"):
        monkeypatch.setenv(var, env[var])
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    folder = os.path.join(env["nnUNet_preprocessed"], dataset)
    with open(os.path.join(folder, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    with open(os.path.join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    if plans_edit is not None:
        plans_edit(plans)
    plans["continue_training"] = False
    return trainer_class(plans, configuration, fold, dataset_json, torch.device("cpu"))
