"""One GPU check sized for a short lease (about 8 minutes of one GPU; not yet run on one): every trainer through
nnU-Net's own commands with nnU-Net's mixed precision and torch.compile on, then the step benchmark at the plans'
batch sizes.

    python benchmarks/gpu_check.py            # on a machine with CUDA; results in $OUT or benchmarks/work/gpu_check
    python benchmarks/gpu_check.py --dry-run  # on a CPU: every step but the CUDA ones, tiny settings (CI runs it)

Steps, each logged with its command and output to ``gpu_check.log``:

1. a synthetic dataset made on the spot (:mod:`nnunet_ssl.synthetic`), ``nnUNetv2_plan_and_preprocess`` and
   ``nnunet_ssl_preprocess_unlabeled`` for one configuration (default 3d_fullres);
2. ``nnUNetv2_train DATASET CONFIG 0 -tr <trainer>_gpucheck -device cuda`` for nnUNetTrainer and every nnunet-ssl
   trainer, ``--parallel`` at a time, with ``nnUNet_compile=t``: one epoch of ``--iterations`` iterations (short
   schedule variants written to this run's ``nnUNet_extTrainer`` folder) and nnU-Net's final validation. Each
   training reports what it ran with: network compiled, grad scaler (AMP) on, the SSL loss run under autocast, and
   peak GPU memory. Self-training comes last: ``nnunet_ssl_pseudolabel`` with the nnUNetTrainer just trained as
   teacher, then its student;
3. ``nnUNetv2_predict`` of one test case with each trained model;
4. ``benchmarks/step_benchmark.py`` on this dataset at the plans' batch sizes (compile on; FLOPs counted on the
   uncompiled network), a few timed steps per trainer.

``gpu_check.md`` holds one table of it all (and ``gpu_check.json`` the same as data). With ``--dry-run``, or where
CUDA is missing, steps 2-4 are skipped and their commands logged; everything else runs. The steps stop being
started once ``--budget-s`` is spent, so a lease always ends with a table.

On a GPU machine without package registry, install what it lacks from the bundle made by
``benchmarks/build_gpu_bundle.py`` first (see there).
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from nnunet_ssl.cpu_environment import with_cpu_environment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import bench_common  # noqa: E402

DATASET_ID, DATASET_NAME = 993, "Dataset993_GPUCheck"
#: trained after the others, from the pseudo-labels of the nnUNetTrainer trained here (its teacher)
SELF_TRAINING, TEACHER = "nnUNetTrainerPseudoLabel", "nnUNetTrainer"
REPORT_PREFIX = "GPUCHECK "
#: synthetic case shapes (z, y, x); "tiny" is the smallest whose plans keep three stages (with two, nnU-Net's deep
#: supervision weights are 0 / 0 and every loss is NaN)
SHAPES = {"full": (48, 64, 56), "tiny": (16, 24, 20)}


class GPUCheckReport:
    """Mixin of the ``<trainer>_gpucheck`` variants: iterations per epoch from ``GPU_CHECK_ITERATIONS``; records
    whether the loss runs under autocast and prints a ``GPUCHECK`` report line when training ends."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = int(os.environ["GPU_CHECK_ITERATIONS"])
        self.autocast_in_loss = None

    def compute_loss(self, *args, **kwargs):
        """(nnunet-ssl trainers only; nnUNetTrainer's report says n/a)"""
        self.autocast_in_loss = torch.is_autocast_enabled(self.device.type)
        return super().compute_loss(*args, **kwargs)

    def on_train_end(self):
        from torch._dynamo import OptimizedModule

        report = {"device": str(self.device), "compiled": isinstance(self.network, OptimizedModule),
                  "grad_scaler": self.grad_scaler is not None, "autocast_in_loss": self.autocast_in_loss,
                  "train_loss": float(self.logger.get_value("train_losses", step=-1)),
                  "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if self.device.type == "cuda" else None}
        print(REPORT_PREFIX + json.dumps(report), flush=True)
        super().on_train_end()


def bin_path(name: str) -> str:
    """A console script of this environment, or of PATH (a ``pip install --target`` puts them there)."""
    local = os.path.join(os.path.dirname(sys.executable), name)
    return local if os.path.isfile(local) else (shutil.which(name) or name)


class Check:
    """The run's folders, log and clock."""

    def __init__(self, out: str, work: str, budget_s: float):
        self.out, self.work, self.deadline = out, work, time.time() + budget_s
        os.makedirs(out, exist_ok=True)
        self.log_file = os.path.join(out, "gpu_check.log")
        self.env = dict(os.environ, nnUNet_raw=os.path.join(work, "raw"),
                        nnUNet_preprocessed=os.path.join(work, "preprocessed"),
                        nnUNet_results=os.path.join(work, "results"), nnUNet_extTrainer=os.path.join(work, "ext"),
                        PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
        self.env = with_cpu_environment(self.env)

    def log(self, text: str, console: bool = True) -> None:
        with open(self.log_file, "a") as f:
            f.write(text + "\n")
        if console:
            print(text, flush=True)

    def time_left(self) -> float:
        return self.deadline - time.time()

    def run(self, args, **env) -> dict:
        """One command, its output into the log; returns exit code, output and seconds."""
        start = time.time()
        result = subprocess.run(args, env=dict(self.env, **env), capture_output=True, text=True)
        seconds = time.time() - start
        self.log(f"$ {' '.join(args)}\n(exit {result.returncode}, {seconds:.1f} s)\n{result.stdout}{result.stderr}",
                 console=False)
        print(f"  {os.path.basename(args[0])} {' '.join(args[1:4])}...: exit {result.returncode}, {seconds:.0f} s",
              flush=True)
        return {"rc": result.returncode, "output": result.stdout, "seconds": seconds}


def prepare_data(check: Check, configuration: str, size: str) -> dict:
    from nnunet_ssl.synthetic import make_dataset

    make_dataset(check.env["nnUNet_raw"], DATASET_ID, "GPUCheck", num_labeled=6, num_unlabeled=4, num_test=1,
                 shape=SHAPES[size])
    processes = str(min(8, os.cpu_count() or 1))
    steps = [[bin_path("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", configuration, "-np", processes],
             [bin_path("nnunet_ssl_preprocess_unlabeled"), "-d", str(DATASET_ID), "-c", configuration, "-np",
              processes]]
    for args in steps:
        result = check.run(args)
        if result["rc"]:
            raise SystemExit(f"error: {' '.join(args)} failed (exit {result['rc']}); see {check.log_file}")
    write_variants(check.env["nnUNet_extTrainer"])
    with open(os.path.join(check.env["nnUNet_preprocessed"], DATASET_NAME, "nnUNetPlans.json")) as f:
        plans = json.load(f)["configurations"][configuration]
    return {"batch_size": plans["batch_size"], "patch_size": plans["patch_size"]}


def write_variants(folder: str) -> None:
    """``<trainer>_gpucheck``: one epoch, iterations from GPU_CHECK_ITERATIONS, 2 validation iterations."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunet_ssl.trainers as trainers
    from nnunet_ssl.variants import short_schedule, write_variants_module

    bases = [nnUNetTrainer] + [getattr(trainers, name) for name in trainers.__all__]
    write_variants_module(folder, "gpu_check_trainers", [
        short_schedule(base, base.__name__ + "_gpucheck", epochs=1, val_iterations=2,
                       mixins=[os.path.abspath(__file__) + ":GPUCheckReport"]) for base in bases],
        "Short-schedule variants (<trainer>_gpucheck) written by benchmarks/gpu_check.py.")


def train_command(trainer: str, configuration: str, device: str) -> list:
    return [bin_path("nnUNetv2_train"), str(DATASET_ID), configuration, "0", "-tr", trainer + "_gpucheck", "-device",
            device]


def pseudolabel_command(configuration: str, device: str) -> list:
    return [bin_path("nnunet_ssl_pseudolabel"), "-d", str(DATASET_ID), "-c", configuration, "-f", "0", "-tr",
            TEACHER + "_gpucheck", "-device", device, "--disable_progress_bar"]


def predict_command(check: Check, trainer: str, configuration: str, device: str) -> list:
    return [bin_path("nnUNetv2_predict"), "-i", os.path.join(check.env["nnUNet_raw"], DATASET_NAME, "imagesTs"),
            "-o", os.path.join(check.work, "predictions", trainer), "-d", str(DATASET_ID), "-c", configuration,
            "-f", "0", "-tr", trainer + "_gpucheck", "-device", device, "-npp", "1", "-nps", "1",
            "--disable_progress_bar"]


def benchmark_args(check: Check, configuration: str, warmup: int, steps: int,
                   device: str = "cuda") -> argparse.Namespace:
    """step_benchmark's options for one measurement: this dataset, the plans' batch size."""
    return argparse.Namespace(steps=steps, warmup=warmup, device=device, workdir=check.work, batch_size=[],
                              dataset=DATASET_NAME)


def methods(trainers: list) -> list:
    """The trainers that are not settings variants of another one in the list, named ``<Trainer>_<variant>`` (e.g.
    nnUNetTrainerDMD_paper of DMD): their step costs are their base's. A method built on another one's class
    (UA-MT on Mean Teacher) is a method of its own."""
    return [t for t in trainers if not any(t.startswith(other + "_") for other in trainers)]


def train_report(result: dict) -> dict:
    """What the ``_gpucheck`` trainer printed at the end of its training (empty if it did not get there)."""
    line = next((l for l in result["output"].splitlines() if l.startswith(REPORT_PREFIX)), None)
    return json.loads(line[len(REPORT_PREFIX):]) if line else {}


def validation_dice(check: Check, trainer: str, configuration: str):
    summary = os.path.join(check.env["nnUNet_results"], DATASET_NAME,
                           f"{trainer}_gpucheck__nnUNetPlans__{configuration}", "fold_0", "validation", "summary.json")
    if not os.path.isfile(summary):
        return None
    with open(summary) as f:
        return json.load(f)["foreground_mean"]["Dice"]


def run_trainers(check: Check, trainers: list, configuration: str, parallel: int, iterations: int,
                 device: str) -> dict:
    """Step 2 and 3 per trainer, ``parallel`` trainers at a time, each with its share of the CPU's workers."""
    workers = str(max(2, (os.cpu_count() or 2) // parallel))

    def one(trainer):
        row = {"trainer": trainer}
        if check.time_left() <= 0:
            return dict(row, status="skipped: out of time")
        trained = check.run(train_command(trainer, configuration, device), nnUNet_compile="t",
                            nnUNet_n_proc_DA=workers, GPU_CHECK_ITERATIONS=str(iterations))
        row.update(train_rc=trained["rc"], train_s=trained["seconds"], **train_report(trained),
                   val_dice=validation_dice(check, trainer, configuration))
        if trained["rc"]:
            return dict(row, status="train failed")
        if not math.isfinite(row.get("train_loss", math.nan)):
            return dict(row, status="train loss not finite")
        if check.time_left() <= 0:
            return dict(row, status="predict skipped: out of time")
        predicted = check.run(predict_command(check, trainer, configuration, device))
        out_dir = predict_command(check, trainer, configuration, device)[4]
        row.update(predict_rc=predicted["rc"], predict_s=predicted["seconds"],
                   predicted_cases=len([f for f in os.listdir(out_dir) if f.endswith(".nii.gz")])
                   if os.path.isdir(out_dir) else 0)
        return dict(row, status="ok" if predicted["rc"] == 0 and row["predicted_cases"] == 1 else "predict failed")

    with ThreadPoolExecutor(parallel) as pool:
        return {row["trainer"]: row for row in pool.map(one, trainers)}


def run_self_training(check: Check, teacher_row: dict, configuration: str, iterations: int, device: str) -> dict:
    """Pseudo-labels of the unlabeled cases from the teacher trained in step 2, then the student (step 2 and 3)."""
    row = {"trainer": SELF_TRAINING}
    if teacher_row.get("status") != "ok":
        return dict(row, status=f"skipped: teacher {TEACHER} {teacher_row.get('status', 'not trained')}")
    if check.time_left() <= 0:
        return dict(row, status="skipped: out of time")
    made = check.run(pseudolabel_command(configuration, device))
    if made["rc"]:
        return dict(row, status="pseudo-labels failed", pseudolabel_s=made["seconds"])
    student = run_trainers(check, [SELF_TRAINING], configuration, 1, iterations, device)[SELF_TRAINING]
    return dict(student, pseudolabel_s=made["seconds"])


def benchmarked(trainers: list) -> list:
    """nnUNetTrainer (the reference) and the methods among the trainers; not self-training, whose step is
    nnUNetTrainer's (one U-Net, nnU-Net's batch, nnU-Net's loss)."""
    return ["nnUNetTrainer"] + [t for t in methods(trainers) if t not in ("nnUNetTrainer", SELF_TRAINING)]


def run_benchmark(check: Check, trainers: list, configuration: str, warmup: int, steps: int, device: str) -> dict:
    """step_benchmark's measurement of each trainer in its own process (compiled, as nnU-Net runs on CUDA), until
    the time is spent; time, work and memory ratios to nnUNetTrainer."""
    import step_benchmark

    env = dict(check.env, nnUNet_compile="t")
    results = []
    for trainer in benchmarked(trainers):
        if check.time_left() <= 0:
            check.log(f"step benchmark: out of time before {trainer}")
            break
        try:
            results.append(step_benchmark.measure(trainer, configuration,
                                                  benchmark_args(check, configuration, warmup, steps, device), env))
        except RuntimeError as error:
            check.log(f"step benchmark of {trainer} failed: {error}")
    check.log(f"step benchmark: {json.dumps(results)}", console=False)
    if not results or results[0]["trainer"] != "nnUNetTrainer":
        return {r["trainer"]: r for r in results}
    return {r["trainer"]: r for r in step_benchmark.ratios(results)}


def fmt(value, spec: str = ".2f", missing: str = "-") -> str:
    if value is None:
        return missing
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def table(rows: dict, steps: dict) -> str:
    lines = ["| Trainer | status | train s | compiled | grad scaler | autocast in loss | final train loss | val Dice "
             "| predict s | step median s | time ratio | work ratio (FLOPs) | peak GPU MB (step) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for trainer, r in rows.items():
        s = steps.get(trainer, {})
        lines.append(" | ".join([
            f"| {trainer}", r.get("status", "-"), fmt(r.get("train_s"), ".0f"), fmt(r.get("compiled")),
            fmt(r.get("grad_scaler")), fmt(r.get("autocast_in_loss"), missing="n/a"), fmt(r.get("train_loss"), ".3f"),
            fmt(r.get("val_dice"), ".3f"), fmt(r.get("predict_s"), ".0f"), fmt(s.get("median_s"), ".3f"),
            fmt(s.get("time_ratio")), fmt(s.get("work_ratio")), fmt(s.get("peak_mb"), ".0f")]) + " |")
    return "\n".join(lines)


def environment() -> dict:
    import torch
    cuda = torch.cuda.is_available()
    return {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": cuda,
            "gpu": torch.cuda.get_device_name(0) if cuda else None, "cpus": os.cpu_count()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(REPO, "benchmarks", "work", "gpu_check"),
                        help="folder of gpu_check.md / .json / .log (default: $OUT if set)")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--iterations", type=int, default=10, help="training iterations per trainer")
    parser.add_argument("--parallel", type=int, default=4, help="trainings on the GPU at a time")
    parser.add_argument("--warmup", type=int, default=2, help="step benchmark: untimed steps (compilation)")
    parser.add_argument("--steps", type=int, default=5, help="step benchmark: timed steps")
    parser.add_argument("--budget-s", type=float, default=400, help="start no step after this many seconds")
    parser.add_argument("--trainers", nargs="+", help="default: nnUNetTrainer and every nnunet-ssl trainer")
    parser.add_argument("--dry-run", action="store_true", help="skip the CUDA steps; tiny synthetic data")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu runs every step on the CPU, where nnU-Net uses neither compile nor AMP (slow; to "
                             "try the check's steps without a GPU)")
    parser.add_argument("--work", help="nnU-Net folders of the run (default: a temporary folder, removed at the end)")
    args = parser.parse_args(argv)

    start = time.time()
    env_info = environment()
    run_steps = (env_info["cuda"] or args.device == "cpu") and not args.dry_run
    trainers = args.trainers or bench_common.trainer_names(self_training=True)
    # self-training last: it needs its teacher's pseudo-labels
    first = [t for t in trainers if t != SELF_TRAINING]
    trainers = first + ([SELF_TRAINING] if SELF_TRAINING in trainers else [])
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as temporary:
        check = Check(os.path.abspath(args.out), os.path.abspath(args.work or temporary), args.budget_s)
        check.log(f"gpu_check: {json.dumps(env_info)}; configuration {args.configuration}, trainers {trainers}")
        plans = prepare_data(check, args.configuration, "full" if run_steps and args.device == "cuda" else "tiny")
        if run_steps:
            rows = run_trainers(check, first, args.configuration, args.parallel, args.iterations, args.device)
            if SELF_TRAINING in trainers:
                rows[SELF_TRAINING] = run_self_training(check, rows.get(TEACHER, {}), args.configuration,
                                                        args.iterations, args.device)
            steps = run_benchmark(check, trainers, args.configuration, args.warmup, args.steps, args.device)
        else:
            check.log("no CUDA" + (" (--dry-run)" if args.dry_run else "") + ": skipped, with these commands:")
            for trainer in trainers:
                if trainer == SELF_TRAINING:
                    check.log("  " + " ".join(pseudolabel_command(args.configuration, "cuda")))
                check.log("  " + " ".join(train_command(trainer, args.configuration, "cuda")))
                check.log("  " + " ".join(predict_command(check, trainer, args.configuration, "cuda")))
            check.log(f"  step benchmark of {benchmarked(trainers)}: "
                      f"{benchmark_args(check, args.configuration, args.warmup, args.steps)}")
            rows, steps = {t: {"trainer": t, "status": "skipped: no CUDA"} for t in trainers}, {}
    header = (f"GPU check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(start))}: {env_info['gpu'] or 'no GPU'}, "
              f"torch {env_info['torch']}, Python {env_info['python']}, {env_info['cpus']} CPUs; "
              f"{args.configuration} of a synthetic dataset, plans batch {plans['batch_size']} x patch "
              f"{plans['patch_size']}; on {args.device if run_steps else 'nothing (CUDA steps skipped)'}: "
              f"{args.iterations} training iterations with nnUNet_compile=t and nnU-Net's AMP, "
              f"final validation, 1 case predicted; step benchmark {args.warmup} + {args.steps} steps; "
              f"{time.time() - start:.0f} s in all")
    text = header + "\n\n" + table(rows, steps) + "\n"
    with open(os.path.join(check.out, "gpu_check.md"), "w") as f:
        f.write(text)
    bench_common.write_json(os.path.join(check.out, "gpu_check.json"),
                            {"provenance": bench_common.provenance(), "environment": env_info, "plans": plans,
                             "trainers": rows, "steps": steps})
    print(text, flush=True)
    failed = [t for t, r in rows.items() if r.get("status") not in ("ok", "skipped: no CUDA")]
    if failed:
        raise SystemExit(f"gpu_check: not ok for {', '.join(failed)}; see {check.log_file}")


if __name__ == "__main__":
    main()
