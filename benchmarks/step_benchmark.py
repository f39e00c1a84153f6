"""Step benchmark: what one training iteration of every SSL trainer costs next to plain nnU-Net, on the same plans.

    python benchmarks/step_benchmark.py       # 2d and 3d_fullres of MSD Hippocampus; see DEFAULTS for the settings
    python benchmarks/step_benchmark.py --configurations 3d_fullres --rounds 3 --warmup 3 --steps 5

Each (trainer, configuration) is measured in its own process, built in-process as ``nnUNetv2_train`` builds it
(fold 0 of the benchmark's SSL split: 5 % labeled, the rest unlabeled), with nnU-Net's data-loader workers
(``nnUNet_n_proc_DA``, nnU-Net's default when unset). After ``--warmup`` steps it times ``--steps`` iterations of

    batch = next(trainer.dataloader_train)    # waiting for data
    trainer.train_step(batch)                 # forward, backward, optimizer step(s), EMA etc.

at the middle of the schedule (``current_epoch = num_epochs // 2``, where every method runs its main stage: BCP's
self-training, not its supervised pre-training), and reports the median iteration time, the share of the iteration
spent in ``next()``, peak memory (CPU: peak RSS
of the main process, ``getrusage``, workers not included; GPU: ``torch.cuda.max_memory_allocated``), the CPU time
the hypervisor gave to other guests meanwhile (steal, ``/proc/stat``) and the main process's minor page faults per
step (fresh memory pages the kernel had to map: on a CPU, tensors above glibc's mmap threshold are mapped anew at
every allocation, which makes large batches cost more per FLOP than small ones).

Rounds: the trainers are measured in ``--rounds`` rounds, the order reversed every other round (A B C, C B A,
A B C, ...), each measurement in a fresh process. A trainer's ratios are taken against the control and
nnUNetTrainer *of the same round* and summarised over the rounds (median, and the range), so a slow drift of the
machine during the run, or a burst of steal, does not decide a verdict: the verdict is ``ok`` or ``miss`` only where
every round agrees, else ``unclear``.

Work a trainer must do: one extra step (first round) runs under ``torch.utils.flop_counter.FlopCounterMode``, which
counts the floating-point operations of every convolution and matrix product in the forward *and* backward passes
(also no-grad passes such as teachers or Monte Carlo samples, and every pass of multi-pass methods). ``work`` is that
count relative to nnUNetTrainer's; ``overhead = time ratio / work ratio - 1`` is the cost beyond that compute.
The verdict's reference is nnUNetTrainer at the batch of the trainer's largest network pass: the control
``nnUNetTrainer@2B``, nnUNetTrainer at batch 2B, for trainers whose networks see B labeled + B unlabeled patches in
one pass; nnUNetTrainer itself for trainers whose passes are B patches each (BCP: its student runs B mixed patches,
its teacher B unlabeled ones). Small batches can under-use the hardware, so against nnUNetTrainer at B a trainer
that runs 2B samples per pass looks cheaper than its work, and against 2B a trainer that runs B looks dearer.
``overhead vs 2B`` is the trainer's time per FLOP over the control's, minus 1 (target < 10 %; with
``--no-control`` every verdict is against nnUNetTrainer). A forward
hook on every U-Net encoder also counts samples through encoders, with and without gradient, per labeled sample
("networks x passes x samples"; forward-only counts 1/3 in ``count``, backward ~ 2 forwards).

Runs every measured process with :data:`nnunet_ssl.cpu_environment.CPU_ENVIRONMENT` unless set: passive OpenMP
waiting (spinning threads next to the data-loader workers distort CPU timings badly) and glibc keeping large blocks
in its heap (otherwise every tensor above 32 MB costs a fresh mmap and its page faults, which on a CPU penalises the
trainers that run 3 or more 3d patches in one batch; ``--glibc-default-malloc`` measures without it).

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
from nnunet_ssl.cpu_environment import CPU_ENVIRONMENT, with_cpu_environment  # noqa: E402

DATA_WAIT_TARGET = 0.05
OVERHEAD_TARGET = 0.10
#: per device, what options left unset default to: on a GPU the plans' batch sizes; on a CPU small batches and few
#: steps, since the plans' batches (292 in 2d, 7 in 3d_fullres) make one LeFeD or CMEMS step take minutes there
DEFAULTS = {"cuda": dict(batch_size=[], warmup=5, steps=20, rounds=3),
            "cpu": dict(batch_size=["2d=8", "3d_fullres=1", "3d_lowres=1"], warmup=3, steps=5, rounds=3)}


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
    """Counts samples through every U-Net encoder, separately with and without gradient, and the largest batch of
    one pass. The hook sits on the encoder's first stage, which every pass goes through, also passes that run the
    stages one by one (LeFeD)."""

    def __init__(self, network):
        self.grad = self.no_grad = self.largest_pass = 0
        self.handles = [m.stages[0].register_forward_hook(self.hook) for m in network.modules()
                        if type(m).__name__ in ("PlainConvEncoder", "ResidualEncoder")]

    def hook(self, module, inputs, output):
        with_grad = torch.is_grad_enabled() and (inputs[0].requires_grad
                                                 or any(p.requires_grad for p in module.parameters()))
        if with_grad:
            self.grad += inputs[0].shape[0]
        else:
            self.no_grad += inputs[0].shape[0]
        self.largest_pass = max(self.largest_pass, inputs[0].shape[0])

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


def started_mid_training(trainer_name: str, configuration: str, batch_size, device: str,
                         dataset: str = bc.DATASET_NAME):
    """The trainer built, its data workers started, in the epoch at the middle of its schedule: every method in
    its main stage (BCP: self-training)."""
    trainer = build_trainer(trainer_name, configuration, batch_size, device, dataset)
    trainer.on_train_start()
    trainer.current_epoch = trainer.num_epochs // 2
    trainer.on_train_epoch_start()
    return trainer


def measure_one(trainer_name: str, configuration: str, batch_size, device: str, warmup: int, steps: int,
                count_work: bool = True, dataset: str = bc.DATASET_NAME) -> dict:
    """Time ``steps`` iterations after ``warmup`` ones; then (``count_work``) count the work of one more. Runs in
    its own process."""
    import resource

    from torch.utils.flop_counter import FlopCounterMode
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
    from nnunet_ssl.networks.pretrained import unwrap

    trainer = started_mid_training(trainer_name, configuration, batch_size, device, dataset)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    waits, totals = [], []
    for i in range(warmup + steps):
        if i == warmup:
            counters, faults = cpu_times(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
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
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    peak_mb = (torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    timed_network = trainer.network
    work = {}
    if count_work:
        batch = next(trainer.dataloader_train)
        trainer.network = unwrap(timed_network)  # the counter sees no compiled op
        counter = EncoderPassCounter(trainer.network)
        with FlopCounterMode(display=False) as flops:
            trainer.train_step(batch)
        counter.remove()
        trainer.network = timed_network
        work = {"flops": flops.get_total_flops(), "encoder_samples_grad": counter.grad,
                "encoder_samples_no_grad": counter.no_grad, "largest_pass": counter.largest_pass}
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        if hasattr(loader, "_finish"):
            loader._finish()
    return {"trainer": trainer_name, "configuration": configuration, "batch_size": trainer.batch_size,
            "compiled": unwrap(timed_network) is not timed_network,
            "unlabeled_batch_size": getattr(trainer, "batch_size_unlabeled", None),
            "patch_size": list(trainer.configuration_manager.patch_size), "n_proc_DA": get_allowed_n_proc_DA(),
            "device": device, "steps": steps, "warmup": warmup,
            "median_s": statistics.median(totals), "wait_share": sum(waits) / sum(totals),
            "median_wait_s": statistics.median(waits), "step_times_s": totals, "peak_mb": peak_mb,
            "cpu_steal_share": steal, "minor_faults_per_step": faults, **work}


def profile_one(trainer_name: str, configuration: str, batch_size, device: str, warmup: int, steps: int) -> str:
    """Where a trainer's step time goes: torch.profiler over ``steps`` iterations (after ``warmup``), the ops with
    the most self time, plus the time spent in the method's own functions (record_function around compute_loss,
    backward / optimizer and anything after the optimizer step such as an EMA update)."""
    from torch.profiler import ProfilerActivity, profile

    trainer = started_mid_training(trainer_name, configuration, batch_size, device)
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


def _summary(values):
    """(median, min, max) of the values that are not None, or None."""
    values = [v for v in values if v is not None]
    return (statistics.median(values), min(values), max(values)) if values else None


def verdict(overheads, target: float = OVERHEAD_TARGET) -> str:
    """``ok`` where every round's overhead is under the target, ``miss`` where every round's reaches it, else
    ``unclear`` (the rounds disagree: the machine, not the trainer, decided)."""
    if all(o < target for o in overheads):
        return "ok"
    return "miss" if all(o >= target for o in overheads) else "unclear"


def _same_round(results: list, r: dict, trainer: str):
    """The measurement of ``trainer`` in the configuration and round of ``r``, or None."""
    key = (r["configuration"], trainer, r.get("round", 0))
    return next((b for b in results if (b["configuration"], b["trainer"], b.get("round", 0)) == key), None)


def ratios(results: list) -> list:
    """One row per (configuration, trainer) from the measurements of all rounds (``round``, 0 when absent): time,
    work and memory ratios to nnUNetTrainer, and the time per FLOP relative to the nnUNetTrainer@2B control's, each
    against the reference measured in the same round, summarised over the rounds as (median, min, max). FLOP and
    encoder counts come from the measurement that counted them (the first round's); peak memory and CPU steal are
    the highest of the rounds."""
    rows = []
    for configuration, trainer in dict.fromkeys((r["configuration"], r["trainer"]) for r in results):
        mine = [r for r in results if (r["configuration"], r["trainer"]) == (configuration, trainer)]
        counted = {c["trainer"]: c for c in results if c["configuration"] == configuration and "flops" in c}
        base, work = counted["nnUNetTrainer"], counted[trainer]
        time_ratios, overheads_2b = [], []
        for r in mine:
            time_ratios.append(r["median_s"] / _same_round(results, r, "nnUNetTrainer")["median_s"])
            control = _same_round(results, r, CONTROL)
            if control is not None:
                overheads_2b.append((r["median_s"] / work["flops"])
                                    / (control["median_s"] / counted[CONTROL]["flops"]) - 1)
        row = {k: v for k, v in work.items() if k != "round"}
        steals = [r["cpu_steal_share"] for r in mine if r.get("cpu_steal_share") is not None]
        faults = [r["minor_faults_per_step"] for r in mine if r.get("minor_faults_per_step") is not None]
        row.update(rounds=len(mine), median_s=statistics.median(r["median_s"] for r in mine),
                   step_times_s=[r["step_times_s"] for r in mine],
                   wait_share=statistics.median(r["wait_share"] for r in mine),
                   peak_mb=max(r["peak_mb"] for r in mine), cpu_steal_share=max(steals) if steals else None,
                   minor_faults_per_step=statistics.median(faults) if faults else None,
                   work_ratio=work["flops"] / base["flops"],
                   count=(work["encoder_samples_grad"] + work["encoder_samples_no_grad"] / 3)
                   / base["encoder_samples_grad"])
        overheads = [t / row["work_ratio"] - 1 for t in time_ratios]
        row["time_ratio"] = statistics.median(time_ratios)
        row["overhead_range"], row["overhead_2b_range"] = _summary(overheads), _summary(overheads_2b)
        row["overhead"] = row["overhead_range"][0]
        row["overhead_2b"] = row["overhead_2b_range"][0] if overheads_2b else None
        row["memory_ratio"] = row["peak_mb"] / max(r["peak_mb"] for r in results
                                                   if (r["configuration"], r["trainer"]) == (configuration,
                                                                                              "nnUNetTrainer"))
        passes_of_b = work.get("largest_pass", 2 * base["batch_size"]) <= base["batch_size"]
        row["verdict_reference"] = CONTROL if overheads_2b and not passes_of_b else "nnUNetTrainer"
        row["verdict"] = verdict(overheads_2b if row["verdict_reference"] == CONTROL else overheads)
        rows.append(row)
    return rows


def _percent_range(summary) -> str:
    if summary is None:
        return "n/a"
    median, low, high = (100 * v for v in summary)
    return f"{median:+.0f} %" if low == high else f"{median:+.0f} % ({low:+.0f} .. {high:+.0f})"


def table(rows: list) -> str:
    """The rows as a Markdown table; ``overhead`` columns show the median over the rounds and their range, the
    verdict (``targets``) is against the reference that ``verdict vs`` names (B: nnUNetTrainer, 2B: the control)."""
    lines = ["| config | Trainer | rounds | median step s | data wait | peak MB | time ratio | work ratio (FLOPs) "
             "| count (enc. samples fwd+bwd / fwd-only per B) | overhead vs nnUNetTrainer | overhead vs 2B | verdict vs "
             "| memory ratio | CPU steal (max) | page faults / step | targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["batch_size"]
        reference = "2B" if r["verdict_reference"] == CONTROL else "B"
        misses = []
        if r["wait_share"] >= DATA_WAIT_TARGET:
            misses.append("data wait")
        if r["trainer"] not in ("nnUNetTrainer", CONTROL) and r["verdict"] != "ok":
            misses.append(f"overhead vs {reference}"
                          f"{' (rounds disagree)' if r['verdict'] == 'unclear' else ''}")
        steal = "n/a" if r.get("cpu_steal_share") is None else f"{100 * r['cpu_steal_share']:.0f} %"
        faults = "n/a" if r.get("minor_faults_per_step") is None else f"{r['minor_faults_per_step'] / 1000:.0f} k"
        lines.append(
            f"| {r['configuration']} | {r['trainer']} | {r['rounds']} | {r['median_s']:.3f} | "
            f"{100 * r['wait_share']:.1f} % | {r['peak_mb']:.0f} | {r['time_ratio']:.2f} | {r['work_ratio']:.2f} | "
            f"{r['count']:.2f} ({r['encoder_samples_grad'] / b:g} / {r['encoder_samples_no_grad'] / b:g}) | "
            f"{_percent_range(r['overhead_range'])} | {_percent_range(r['overhead_2b_range'])} | {reference} | "
            f"{r['memory_ratio']:.2f} | {steal} | {faults} | "
            f"{'miss: ' + ', '.join(misses) if misses else 'ok'} |")
    return "\n".join(lines)


def measure(trainer: str, configuration: str, args, env: dict, batch_size: str = None,
            count_work: bool = True) -> dict:
    """One (trainer, configuration) measured in its own process (``--one``); ``batch_size`` overrides
    ``--batch-size`` as CONFIG=N; ``count_work``: also count its FLOPs and encoder samples (one more step)."""
    print(f"{configuration} {trainer}{' ' + batch_size if batch_size else ''}: {args.warmup} + {args.steps} "
          f"steps ...", flush=True)
    command = [sys.executable, os.path.abspath(__file__), "--one", trainer, configuration,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
               "--workdir", args.workdir, "--configurations", configuration, "--dataset", args.dataset]
    batch_sizes = [batch_size] if batch_size else args.batch_size
    if batch_sizes:
        command += ["--batch-size", *batch_sizes]
    if not count_work:
        command.append("--skip-work")
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{trainer} {configuration} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    r = json.loads(line[len("RESULT "):])
    steal = "" if r["cpu_steal_share"] is None else f", CPU steal {100 * r['cpu_steal_share']:.0f} %"
    flops = f", {r['flops'] / 1e9:.1f} GFLOP" if "flops" in r else ""
    print(f"    median {r['median_s']:.3f} s, data wait {100 * r['wait_share']:.1f} %, "
          f"peak {r['peak_mb']:.0f} MB{flops}{steal}, {r['minor_faults_per_step'] / 1000:.0f} k page faults / step",
          flush=True)
    return r


def round_order(names: list, round_index: int) -> list:
    """The order of a round's measurements: as given in even rounds, reversed in odd ones (A B C, C B A, A B C),
    so that a steady drift of the machine's speed favours no trainer over the rounds."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configurations", nargs="+", default=["2d", "3d_fullres"])
    parser.add_argument("--trainers", nargs="+", help="default: nnUNetTrainer and every nnunet-ssl trainer")
    parser.add_argument("--batch-size", nargs="+", metavar="CONFIG=N",
                        help="override the plans' batch size per configuration (default: see DEFAULTS)")
    parser.add_argument("--steps", type=int, help="timed steps (default: see DEFAULTS)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: see DEFAULTS)")
    parser.add_argument("--rounds", type=int,
                        help="measure every trainer this many times, in alternating order (default: see DEFAULTS)")
    parser.add_argument("--device", default=None, help="cuda if available, else cpu")
    parser.add_argument("--workdir", default=bc.DEFAULT_WORKDIR)
    parser.add_argument("--dataset", default=bc.DATASET_NAME,
                        help="a preprocessed dataset in the environment's nnUNet_preprocessed (default: MSD "
                             "Hippocampus, prepared in --workdir); others are used as they are")
    parser.add_argument("--output", help="results JSON (default <workdir>/step_benchmark.json)")
    parser.add_argument("--profile", nargs=2, metavar=("TRAINER", "CONFIGURATION"),
                        help="instead of the benchmark: torch.profiler table of one trainer's steps")
    parser.add_argument("--no-control", action="store_true", help="skip the nnUNetTrainer@2B control row")
    parser.add_argument("--glibc-default-malloc", action="store_true",
                        help="measure with glibc's default allocator settings instead of nnunet_ssl.cpu_environment's "
                             "(which keep large blocks in the heap instead of a fresh mmap per allocation)")
    parser.add_argument("--one", nargs=2, metavar=("TRAINER", "CONFIGURATION"), help=argparse.SUPPRESS)
    parser.add_argument("--skip-work", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    for option, value in DEFAULTS["cpu" if args.device == "cpu" else "cuda"].items():
        if getattr(args, option) is None:
            setattr(args, option, value)
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--rounds and --steps must be at least 1, --warmup at least 0")
    try:
        batch_sizes = {k: int(v) for k, v in (item.split("=") for item in args.batch_size)}
    except ValueError:
        parser.error(f"--batch-size takes CONFIG=N items (e.g. 2d=8), got {' '.join(args.batch_size)}")

    hippocampus = args.dataset == bc.DATASET_NAME
    env = with_cpu_environment(os.environ)
    if hippocampus:
        env = bc.prepare_hippocampus(args.workdir, args.configurations)
        bc.use_env(env)
    if args.glibc_default_malloc:
        env = {k: v for k, v in env.items() if not k.startswith("MALLOC_")}
    environment = {name: env.get(name) for name in CPU_ENVIRONMENT}
    if hippocampus and not args.one:  # a measurement's process finds the split its parent wrote
        bc.write_splits(env, args.workdir, fraction=0.05)
    if args.profile:
        trainer, configuration = args.profile
        print(profile_one(trainer, configuration, batch_sizes.get(configuration), args.device, args.warmup,
                          args.steps), flush=True)
        os._exit(0)
    if args.one:
        trainer, configuration = args.one
        result = measure_one(trainer, configuration, batch_sizes.get(configuration), args.device, args.warmup,
                             args.steps, count_work=not args.skip_work, dataset=args.dataset)
        print("RESULT " + json.dumps(result), flush=True)
        os._exit(0)  # do not wait for data-loader workers to wind down

    trainers = args.trainers or bc.trainer_names()
    trainers = ["nnUNetTrainer"] + [t for t in trainers if t != "nnUNetTrainer"]
    names = trainers[:1] + ([] if args.no_control else [CONTROL]) + trainers[1:]
    results = []
    for configuration in args.configurations:
        doubled = None  # the control's batch, 2 x nnUNetTrainer's (measured first in round 0)
        for round_index in range(args.rounds):
            print(f"-- {configuration}, round {round_index + 1} of {args.rounds}", flush=True)
            for name in round_order(names, round_index):
                trainer, batch_size = ("nnUNetTrainer", doubled) if name == CONTROL else (name, None)
                r = measure(trainer, configuration, args, env, batch_size, count_work=round_index == 0)
                if name == "nnUNetTrainer":
                    doubled = f"{configuration}={2 * r['batch_size']}"
                results.append(dict(r, trainer=name, round=round_index))
    rows = ratios(results)
    print(f"\ndevice {args.device} ({torch.__version__}, {torch.get_num_threads()} threads), nnUNet_n_proc_DA "
          f"{rows[0]['n_proc_DA']}, {args.rounds} round(s) of {args.warmup} warm-up + {args.steps} timed steps "
          f"per trainer; labeled batch B and patch: "
          + "; ".join(f"{r['configuration']} B={r['batch_size']} x {r['patch_size']}"
                      for r in rows if r["trainer"] == "nnUNetTrainer")
          + " (SSL trainers add B unlabeled patches); environment "
          + ", ".join(f"{name}={value}" for name, value in environment.items()))
    print(table(rows))
    output = args.output or os.path.join(args.workdir, "step_benchmark.json")
    bc.write_json(output, {"provenance": dict(bc.provenance(), environment=environment), "rows": rows,
                           "measurements": results})
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
