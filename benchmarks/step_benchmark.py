"""Step benchmark: what one training iteration of every SSL trainer costs next to plain nnU-Net, on the same plans.

    python benchmarks/step_benchmark.py       # 2d and 3d_fullres of MSD Hippocampus; see DEFAULTS for the settings
    python benchmarks/step_benchmark.py --configurations 2d --batch-size 2d=8 --warmup 3 --steps 10   # CPU run of
    python benchmarks/step_benchmark.py --configurations 3d_fullres --batch-size 3d_fullres=1 \
        --warmup 2 --steps 5                                                                   # RESULTS.md

Each (trainer, configuration) is measured in its own process, built in-process as ``nnUNetv2_train`` builds it
(fold 0 of the benchmark's SSL split: 5 % labeled, the rest unlabeled), with nnU-Net's data-loader workers
(``nnUNet_n_proc_DA``, nnU-Net's default when unset). After ``--warmup`` steps it times ``--steps`` iterations of

    batch = next(trainer.dataloader_train)    # waiting for data
    trainer.train_step(batch)                 # forward, backward, optimizer step(s), EMA etc.

and reports the median iteration time, the share of the iteration spent in ``next()``, and peak memory (CPU:
peak RSS of the main process, ``getrusage``, workers not included; GPU: ``torch.cuda.max_memory_allocated``).

Work a trainer must do: one extra step runs under ``torch.utils.flop_counter.FlopCounterMode``, which counts the
floating-point operations of every convolution and matrix product in the forward *and* backward passes (also
no-grad passes such as teachers or Monte Carlo samples, and every pass of multi-pass methods). ``work`` is that
count relative to nnUNetTrainer's; ``overhead = time ratio / work ratio - 1`` is the cost beyond that compute
(target < 10 %). Small batches can under-use the hardware, which makes a trainer that runs 2B samples per pass
look cheaper than its work; a control row, nnUNetTrainer at batch 2B (``nnUNetTrainer@2B``), shows that, and
``overhead vs 2B`` compares every trainer's time per FLOP with the control's. A forward hook on every U-Net encoder also counts samples through encoders, with and without
gradient, per labeled sample ("networks x passes x samples"; forward-only counts 1/3 in ``count``, backward ~ 2
forwards).

Runs with ``OMP_WAIT_POLICY=PASSIVE`` unless set (spinning OpenMP threads next to the data-loader workers
distort CPU timings badly; see ``bench_common.nnunet_env``).

Where the time goes for one trainer (torch.profiler, ops with the most self time):

    python benchmarks/step_benchmark.py --profile nnUNetTrainerCMEMS 3d_fullres --batch-size 3d_fullres=1 --warmup 1 --steps 2
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# before torch loads OpenMP: passive waiting, see bench_common.nnunet_env (the measured processes get it from there)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

DATA_WAIT_TARGET = 0.05
OVERHEAD_TARGET = 0.10
#: per device, what options left unset default to: on a GPU the plans' batch sizes; on a CPU small batches and few
#: steps, since the plans' batches (292 in 2d, 7 in 3d_fullres) make one LeFeD or CMEMS step take minutes there
DEFAULTS = {"cuda": dict(batch_size=[], warmup=5, steps=30),
            "cpu": dict(batch_size=["2d=8", "3d_fullres=1", "3d_lowres=1"], warmup=3, steps=8)}


def build_trainer(trainer_name: str, configuration: str, batch_size, device, dataset: str = bc.DATASET_NAME):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunet_ssl.trainers as trainers

    trainer_class = nnUNetTrainer if trainer_name == "nnUNetTrainer" else getattr(trainers, trainer_name)
    folder = os.path.join(os.environ["nnUNet_preprocessed"], dataset)
    plans = load_json(os.path.join(folder, "nnUNetPlans.json"))
    if batch_size is not None:
        plans["configurations"][configuration]["batch_size"] = batch_size
    plans["continue_training"] = False  # read (and removed) by nnUNetTrainer.__init__
    return trainer_class(plans, configuration, 0, load_json(os.path.join(folder, "dataset.json")),
                         torch.device(device))


class EncoderPassCounter:
    """Counts samples through every U-Net encoder, separately with and without gradient. The hook sits on the
    encoder's first stage, which every pass goes through, also passes that run the stages one by one (LeFeD)."""

    def __init__(self, network):
        self.grad = self.no_grad = 0
        self.handles = [m.stages[0].register_forward_hook(self.hook) for m in network.modules()
                        if type(m).__name__ in ("PlainConvEncoder", "ResidualEncoder")]

    def hook(self, module, inputs, output):
        with_grad = torch.is_grad_enabled() and (inputs[0].requires_grad
                                                 or any(p.requires_grad for p in module.parameters()))
        if with_grad:
            self.grad += inputs[0].shape[0]
        else:
            self.no_grad += inputs[0].shape[0]

    def remove(self):
        for h in self.handles:
            h.remove()


def cpu_times():
    """The machine's CPU time counters (``/proc/stat``: user ... steal), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:9]]
    except OSError:
        return None


def steal_share(before, after):
    """Share of the CPU time the hypervisor gave to other guests between two ``cpu_times()`` readings (on a
    virtual machine this slows every step, whatever the benchmark does); None where unknown."""
    if before is None or after is None:
        return None
    delta = [a - b for a, b in zip(after, before)]
    return delta[7] / sum(delta) if sum(delta) else None


def measure_one(trainer_name: str, configuration: str, batch_size, device: str, warmup: int, steps: int,
                dataset: str = bc.DATASET_NAME) -> dict:
    """Time ``steps`` iterations after ``warmup`` ones; then count the work of one more. Runs in its own process."""
    import resource

    from torch.utils.flop_counter import FlopCounterMode
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
    from nnunet_ssl.networks.pretrained import unwrap

    trainer = build_trainer(trainer_name, configuration, batch_size, device, dataset)
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    waits, totals = [], []
    for i in range(warmup + steps):
        if i == warmup:
            counters = cpu_times()
        start = time.perf_counter()
        batch = next(trainer.dataloader_train)
        got = time.perf_counter()
        trainer.train_step(batch)
        sync()
        end = time.perf_counter()
        if i >= warmup:
            waits.append(got - start)
            totals.append(end - start)
    steal = steal_share(counters, cpu_times())
    peak_mb = (torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    batch = next(trainer.dataloader_train)
    timed_network, trainer.network = trainer.network, unwrap(trainer.network)  # the counter sees no compiled op
    counter = EncoderPassCounter(trainer.network)
    with FlopCounterMode(display=False) as flops:
        trainer.train_step(batch)
    counter.remove()
    trainer.network = timed_network
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        if hasattr(loader, "_finish"):
            loader._finish()
    return {"trainer": trainer_name, "configuration": configuration, "batch_size": trainer.batch_size,
            "compiled": timed_network is not trainer.network,
            "unlabeled_batch_size": getattr(trainer, "batch_size_unlabeled", None),
            "patch_size": list(trainer.configuration_manager.patch_size), "n_proc_DA": get_allowed_n_proc_DA(),
            "device": device, "steps": steps, "warmup": warmup,
            "median_s": statistics.median(totals), "wait_share": sum(waits) / sum(totals),
            "median_wait_s": statistics.median(waits), "step_times_s": totals, "peak_mb": peak_mb,
            "flops": flops.get_total_flops(), "cpu_steal_share": steal, "encoder_samples_grad": counter.grad,
            "encoder_samples_no_grad": counter.no_grad}


def profile_one(trainer_name: str, configuration: str, batch_size, device: str, warmup: int, steps: int) -> str:
    """Where a trainer's step time goes: torch.profiler over ``steps`` iterations (after ``warmup``), the ops with
    the most self time, plus the time spent in the method's own functions (record_function around compute_loss,
    backward / optimizer and anything after the optimizer step such as an EMA update)."""
    from torch.profiler import ProfilerActivity, profile

    trainer = build_trainer(trainer_name, configuration, batch_size, device)
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    for _ in range(warmup):
        trainer.train_step(next(trainer.dataloader_train))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            with torch.profiler.record_function("## next(dataloader)"):
                batch = next(trainer.dataloader_train)
            with torch.profiler.record_function("## train_step"):
                trainer.train_step(batch)
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=25)


CONTROL = "nnUNetTrainer@2B"


def ratios(results: list) -> list:
    """Adds, per result, time/work/memory ratios to nnUNetTrainer of the same configuration, and the time per
    FLOP relative to the nnUNetTrainer@2B control's (when measured)."""
    rows = []
    for r in results:
        same = {b["trainer"]: b for b in results if b["configuration"] == r["configuration"]}
        base, control = same["nnUNetTrainer"], same.get(CONTROL)
        row = dict(r)
        row["overhead_2b"] = None if control is None else \
            (r["median_s"] / r["flops"]) / (control["median_s"] / control["flops"]) - 1
        row["time_ratio"] = r["median_s"] / base["median_s"]
        row["work_ratio"] = r["flops"] / base["flops"]
        row["count"] = (r["encoder_samples_grad"] + r["encoder_samples_no_grad"] / 3) / base["encoder_samples_grad"]
        row["overhead"] = row["time_ratio"] / row["work_ratio"] - 1
        row["memory_ratio"] = r["peak_mb"] / base["peak_mb"]
        rows.append(row)
    return rows


def table(rows: list) -> str:
    lines = ["| config | Trainer | median step s | data wait | peak MB | time ratio | work ratio (FLOPs) "
             "| count (enc. samples fwd+bwd / fwd-only per B) | overhead beyond work | overhead vs 2B | memory ratio "
             "| CPU steal | targets |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["batch_size"]
        misses = []
        if r["wait_share"] >= DATA_WAIT_TARGET:
            misses.append("data wait")
        if r["overhead"] >= OVERHEAD_TARGET and r["trainer"] != CONTROL:
            misses.append("overhead")
        overhead_2b = "n/a" if r["overhead_2b"] is None else f"{100 * r['overhead_2b']:+.0f} %"
        steal = "n/a" if r.get("cpu_steal_share") is None else f"{100 * r['cpu_steal_share']:.0f} %"
        lines.append(
            f"| {r['configuration']} | {r['trainer']} | {r['median_s']:.3f} | {100 * r['wait_share']:.1f} % | "
            f"{r['peak_mb']:.0f} | {r['time_ratio']:.2f} | {r['work_ratio']:.2f} | {r['count']:.2f} "
            f"({r['encoder_samples_grad'] / b:g} / {r['encoder_samples_no_grad'] / b:g}) | "
            f"{100 * r['overhead']:+.0f} % | {overhead_2b} | {r['memory_ratio']:.2f} | {steal} | "
            f"{'miss: ' + ', '.join(misses) if misses else 'ok'} |")
    return "\n".join(lines)


def measure(trainer: str, configuration: str, args, env: dict, batch_size: str = None) -> dict:
    """One (trainer, configuration) measured in its own process (``--one``); ``batch_size`` overrides
    ``--batch-size`` as CONFIG=N."""
    print(f"{configuration} {trainer}{' ' + batch_size if batch_size else ''}: {args.warmup} + {args.steps} "
          f"steps ...", flush=True)
    command = [sys.executable, os.path.abspath(__file__), "--one", trainer, configuration,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
               "--workdir", args.workdir, "--configurations", configuration, "--dataset", args.dataset]
    batch_sizes = [batch_size] if batch_size else args.batch_size
    if batch_sizes:
        command += ["--batch-size", *batch_sizes]
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{trainer} {configuration} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    r = json.loads(line[len("RESULT "):])
    steal = "" if r["cpu_steal_share"] is None else f", CPU steal {100 * r['cpu_steal_share']:.0f} %"
    print(f"    median {r['median_s']:.3f} s, data wait {100 * r['wait_share']:.1f} %, "
          f"peak {r['peak_mb']:.0f} MB, {r['flops'] / 1e9:.1f} GFLOP{steal}", flush=True)
    return r


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configurations", nargs="+", default=["2d", "3d_fullres"])
    parser.add_argument("--trainers", nargs="+", help="default: nnUNetTrainer and every nnunet-ssl trainer")
    parser.add_argument("--batch-size", nargs="+", metavar="CONFIG=N",
                        help="override the plans' batch size per configuration (default: see DEFAULTS)")
    parser.add_argument("--steps", type=int, help="timed steps (default: see DEFAULTS)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: see DEFAULTS)")
    parser.add_argument("--device", default=None, help="cuda if available, else cpu")
    parser.add_argument("--workdir", default=bc.DEFAULT_WORKDIR)
    parser.add_argument("--dataset", default=bc.DATASET_NAME,
                        help="a preprocessed dataset in the environment's nnUNet_preprocessed (default: MSD "
                             "Hippocampus, prepared in --workdir); others are used as they are")
    parser.add_argument("--output", help="results JSON (default <workdir>/step_benchmark.json)")
    parser.add_argument("--profile", nargs=2, metavar=("TRAINER", "CONFIGURATION"),
                        help="instead of the benchmark: torch.profiler table of one trainer's steps")
    parser.add_argument("--no-control", action="store_true", help="skip the nnUNetTrainer@2B control row")
    parser.add_argument("--one", nargs=2, metavar=("TRAINER", "CONFIGURATION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    for option, value in DEFAULTS["cpu" if args.device == "cpu" else "cuda"].items():
        if getattr(args, option) is None:
            setattr(args, option, value)
    try:
        batch_sizes = {k: int(v) for k, v in (item.split("=") for item in args.batch_size)}
    except ValueError:
        parser.error(f"--batch-size takes CONFIG=N items (e.g. 2d=8), got {' '.join(args.batch_size)}")

    hippocampus = args.dataset == bc.DATASET_NAME
    env = dict(os.environ)
    if hippocampus:
        env = bc.prepare_hippocampus(args.workdir, args.configurations)
        bc.use_env(env)
    if args.profile:
        trainer, configuration = args.profile
        print(profile_one(trainer, configuration, batch_sizes.get(configuration), args.device, args.warmup,
                          args.steps), flush=True)
        os._exit(0)
    if args.one:
        trainer, configuration = args.one
        result = measure_one(trainer, configuration, batch_sizes.get(configuration), args.device, args.warmup,
                             args.steps, args.dataset)
        print("RESULT " + json.dumps(result), flush=True)
        os._exit(0)  # do not wait for data-loader workers to wind down

    if hippocampus:
        bc.write_splits(env, args.workdir, fraction=0.05)
    trainers = args.trainers or bc.trainer_names()
    if "nnUNetTrainer" not in trainers:
        trainers = ["nnUNetTrainer"] + trainers
    results = []
    for configuration in args.configurations:
        for trainer in trainers:
            results.append(measure(trainer, configuration, args, env))
            if trainer == "nnUNetTrainer" and not args.no_control:
                doubled = f"{configuration}={2 * results[-1]['batch_size']}"
                results.append(dict(measure(trainer, configuration, args, env, doubled), trainer=CONTROL))
    rows = ratios(results)
    print(f"\ndevice {args.device} ({torch.__version__}, {torch.get_num_threads()} threads), nnUNet_n_proc_DA "
          f"{rows[0]['n_proc_DA']}, {args.warmup} warm-up + {args.steps} timed steps; labeled batch B and patch: "
          + "; ".join(f"{r['configuration']} B={r['batch_size']} x {r['patch_size']}"
                      for r in rows if r["trainer"] == "nnUNetTrainer")
          + " (SSL trainers add B unlabeled patches)")
    print(table(rows))
    output = args.output or os.path.join(args.workdir, "step_benchmark.json")
    with open(output, "w") as f:
        json.dump({"provenance": bc.provenance(), "rows": rows}, f, indent=1)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
