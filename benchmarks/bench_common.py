"""What both benchmarks share: the nnU-Net folders of the benchmark, the real datasets (MSD Hippocampus with a fixed
held-out test set; ACDC with SSL4MIS's split), the trainers to compare, and running console commands with progress
output."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from nnunet_ssl.cpu_environment import with_cpu_environment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_WORKDIR = os.path.join(REPO, "benchmarks", "work")
#: MSD Hippocampus (images/ and labels/); ../shared/data next to the repository unless NNUNET_SSL_HIPPOCAMPUS is set
HIPPOCAMPUS = os.environ.get("NNUNET_SSL_HIPPOCAMPUS", os.path.join(
    os.path.dirname(REPO), "shared", "data", "MSD_Task04_Hippocampus", "TrainingSet"))
DATASET_ID = 4
DATASET_NAME = "Dataset004_Hippocampus"
#: ACDC in SSL4MIS's h5 form with its lists (../shared/data/ACDC unless NNUNET_SSL_ACDC is set)
ACDC = os.environ.get("NNUNET_SSL_ACDC", os.path.join(os.path.dirname(REPO), "shared", "data", "ACDC"))
ACDC_ID = 27
ACDC_NAME = "Dataset027_ACDC"
#: cases moved to imagesTs/labelsTs before planning; never in any split, so never trained on
TEST_FRACTION = 0.2
TEST_SEED = 0


def nnunet_env(workdir: str, **extra) -> dict:
    """The environment of every nnU-Net command of the benchmark: its own raw/preprocessed/results folders and
    its own ``nnUNet_extTrainer`` folder (the benchmark's short-schedule trainers)."""
    env = dict(os.environ, nnUNet_raw=os.path.join(workdir, "nnUNet_raw"),
               nnUNet_preprocessed=os.path.join(workdir, "nnUNet_preprocessed"),
               nnUNet_results=os.path.join(workdir, "nnUNet_results"),
               nnUNet_extTrainer=os.path.join(workdir, "ext"), PYTHONWARNINGS="ignore")
    # the small-CPU settings (nnunet_ssl.cpu_environment: passive OpenMP waiting, glibc keeping large blocks),
    # unless set; step_benchmark's --glibc-default-malloc measures without the glibc ones
    env = with_cpu_environment(env)
    # nnU-Net's final validation exports through a pool of nnUNet_def_n_proc (default 8) spawned processes of
    # about 1 GB each; more than the cores only costs memory and start-up
    env.setdefault("nnUNet_def_n_proc", str(min(8, os.cpu_count() or 2)))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def use_env(env: dict) -> None:
    """Make this process see the benchmark's nnU-Net folders (before nnunetv2 is imported)."""
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        os.environ[key] = env[key]


def bin_path(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def run(args, env, log_file=None):
    """Run a console command; its output goes to ``log_file`` (or the console). Raises with the log's tail."""
    start = time.time()
    print(f"  $ {' '.join(args)}", flush=True)
    if log_file is None:
        subprocess.run(args, env=env, check=True)
    else:
        with open(log_file, "a") as log:
            result = subprocess.run(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            with open(log_file) as log:
                tail = log.read()[-4000:]
            raise RuntimeError(f"{args[0]} exited {result.returncode}; end of {log_file}:\n{tail}")
    print(f"    done in {time.time() - start:.0f} s", flush=True)


#: trainers that can only start once a teacher has made pseudo-labels (``nnunet_ssl_pseudolabel``)
NEEDS_PSEUDO_LABELS = ("nnUNetTrainerPseudoLabel",)


def trainer_names(self_training: bool = False) -> list:
    """nnU-Net's own trainer first, then every nnunet-ssl trainer (new ones are picked up automatically); the
    self-training ones only when asked, as they need a teacher's pseudo-labels first."""
    import nnunet_ssl.trainers as trainers
    return ["nnUNetTrainer"] + [name for name in trainers.__all__
                                if self_training or name not in NEEDS_PSEUDO_LABELS]


def test_case_ids(case_ids, fraction=TEST_FRACTION, seed=TEST_SEED) -> list:
    """The fixed held-out test cases: a seeded random ``fraction`` of all cases, sorted."""
    case_ids = sorted(case_ids)
    n_test = int(round(len(case_ids) * fraction))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(case_ids, n_test, replace=False).tolist())


def require_folder(folder: str, variable: str, what: str) -> None:
    """Exit with a message naming the missing data folder and the variable that points elsewhere."""
    if not os.path.isdir(folder):
        raise SystemExit(f"error: {folder} not found: the benchmark needs {what} there, or set {variable} to its "
                         f"folder")


def prepare_hippocampus(workdir: str, configurations=("2d", "3d_fullres")) -> dict:
    """Convert MSD Hippocampus, move the fixed test cases to imagesTs/labelsTs, plan and preprocess. Each step is
    skipped when its output exists. Returns the benchmark environment."""
    env = nnunet_env(workdir)
    raw = os.path.join(env["nnUNet_raw"], DATASET_NAME)
    if not os.path.isfile(os.path.join(raw, "dataset.json")):
        require_folder(os.path.join(HIPPOCAMPUS, "images"), "NNUNET_SSL_HIPPOCAMPUS", "MSD Hippocampus TrainingSet")
        print("converting MSD Hippocampus", flush=True)
        run([bin_path("nnunet_ssl_convert_folder"), "-i", os.path.join(HIPPOCAMPUS, "images"),
             "-l", os.path.join(HIPPOCAMPUS, "labels"), "-d", str(DATASET_ID), "-n", "Hippocampus",
             "--modality", "MRI", "--labels", "background=0,anterior=1,posterior=2"], env)
    if not os.path.isdir(os.path.join(raw, "labelsTs")):
        hold_out_test_cases(raw)
    plan_and_preprocess(env, DATASET_ID, DATASET_NAME, configurations, workdir)
    return env


def prepare_acdc(workdir: str, configurations=("2d",)) -> dict:
    """Convert ACDC with SSL4MIS's protocol (``nnunet_ssl_convert_acdc``: the test.list patients in
    imagesTs/labelsTs, never trained on; one fold with the first 7 train.list patients labeled, the other 63
    unlabeled, val.list as validation), plan and preprocess. Each step is skipped when its output exists."""
    env = nnunet_env(workdir)
    if not os.path.isfile(os.path.join(env["nnUNet_raw"], ACDC_NAME, "dataset.json")):
        require_folder(ACDC, "NNUNET_SSL_ACDC", "ACDC (SSL4MIS h5 files and lists)")
        print("converting ACDC", flush=True)
        run([bin_path("nnunet_ssl_convert_acdc"), "-i", ACDC, "-d", str(ACDC_ID)], env)
    plan_and_preprocess(env, ACDC_ID, ACDC_NAME, configurations, workdir)
    return env


def plan_and_preprocess(env: dict, dataset_id: int, dataset_name: str, configurations, workdir: str) -> None:
    """nnU-Net's planning and preprocessing of the configurations not preprocessed yet."""
    preprocessed = os.path.join(env["nnUNet_preprocessed"], dataset_name)
    missing = [c for c in configurations if not os.path.isdir(os.path.join(preprocessed, _data_identifier(c)))]
    if missing:
        print(f"planning and preprocessing {dataset_name} {missing}", flush=True)
        workers = str(min(8, os.cpu_count() or 2))
        run([bin_path("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", *missing, "-np", workers], env,
            os.path.join(workdir, f"preprocess_{dataset_name}.log"))


def _data_identifier(configuration: str) -> str:
    return f"nnUNetPlans_{configuration}"


def hold_out_test_cases(raw: str) -> None:
    """Move the test cases out of imagesTr/labelsTr before planning, so that no split can contain them."""
    labels_tr = os.path.join(raw, "labelsTr")
    cases = [f[:-len(".nii.gz")] for f in os.listdir(labels_tr) if f.endswith(".nii.gz")]
    test = test_case_ids(cases)
    for folder in ("imagesTs", "labelsTs"):
        os.makedirs(os.path.join(raw, folder + ".tmp"), exist_ok=True)
    for case in test:
        shutil.move(os.path.join(raw, "imagesTr", f"{case}_0000.nii.gz"), os.path.join(raw, "imagesTs.tmp"))
        shutil.move(os.path.join(labels_tr, f"{case}.nii.gz"), os.path.join(raw, "labelsTs.tmp"))
    dataset_json_file = os.path.join(raw, "dataset.json")
    with open(dataset_json_file) as f:
        dataset_json = json.load(f)
    dataset_json["numTraining"] = len(cases) - len(test)
    with open(dataset_json_file, "w") as f:
        json.dump(dataset_json, f, indent=4)
    for folder in ("imagesTs", "labelsTs"):  # renamed last: their presence marks the step as done
        os.rename(os.path.join(raw, folder + ".tmp"), os.path.join(raw, folder))
    print(f"held out {len(test)} test cases in imagesTs/labelsTs; {len(cases) - len(test)} left for training",
          flush=True)


def write_splits(env: dict, workdir: str, num_labeled: int = None, fraction: float = None) -> None:
    """nnU-Net's 5 folds, each with ``num_labeled`` cases (or a ``fraction``) of its training cases labeled and the
    rest unlabeled; kept if already written for the same amount."""
    amount = ["--num-labeled", str(num_labeled)] if num_labeled is not None else ["--fraction", str(fraction)]
    splits = os.path.join(env["nnUNet_preprocessed"], DATASET_NAME, "splits_final.json")
    marker = os.path.join(workdir, "splits" + "_".join(amount).replace("--", "_"))
    if os.path.isfile(splits) and os.path.isfile(marker):
        return
    if os.path.isfile(splits):
        raise SystemExit(f"{splits} exists for another labeled amount than {' '.join(amount)}; use another --workdir")
    run([bin_path("nnunet_ssl_split"), "-d", str(DATASET_ID), *amount, "--folds", "5"], env)
    open(marker, "w").close()


def write_json(path: str, data: dict) -> None:
    """Write ``data`` (already built) to ``path``. Results go through here so that their ``provenance()`` is taken
    before the file is opened: opening a tracked result file for writing truncates it, and a provenance taken after
    that records a clean checkout as dirty."""
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def provenance(seeds: dict = None) -> dict:
    """What made a result: the commit (whether the tree had uncommitted changes to tracked files, and which:
    a benchmark checkout whose only changes are its own result files still ran the commit's code), package
    versions, seeds, the command line and the machine."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def git(*args):
        try:
            return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    def package_version(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    cpu = next((line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None,
            "changed": [line.split(maxsplit=1)[1] for line in status.splitlines()] if status else [],
            "versions": {name: package_version(name) for name in
                         ("nnunet-ssl", "nnunetv2", "torch", "dynamic-network-architectures", "batchgeneratorsv2")},
            "python": platform.python_version(), "seeds": seeds or {}, "command": " ".join(sys.argv),
            "machine": {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()},
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _read_lines(path: str) -> list:
    try:
        with open(path) as f:
            return f.readlines()
    except OSError:
        return []
