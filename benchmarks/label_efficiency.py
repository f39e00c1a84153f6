"""Label-efficiency benchmark: nnU-Net on a few labeled cases alone versus every SSL trainer with the same labeled
cases plus the rest as unlabeled, the same number of iterations, scored on held-out test cases.

    python benchmarks/label_efficiency.py --budget cpu-1h      # Hippocampus, about an hour on a 2-core CPU
    python benchmarks/label_efficiency.py --budget gpu         # Hippocampus 3d_fullres, one GPU, several hours
    python benchmarks/label_efficiency.py --budget acdc-gpu    # ACDC 2d, SSL4MIS split, one GPU, short

Data (../shared/data):
* MSD Hippocampus. A fixed, seeded 20 % of the cases is moved to imagesTs/labelsTs *before* planning, so no split
  can contain them and they are never trained on (not even as unlabeled cases). The rest is planned and
  preprocessed; ``nnunet_ssl_split --fraction F --folds 5`` then makes nnU-Net's 5 folds with a labeled fraction F
  of each fold's training cases and the others unlabeled. Each fold is one repetition (other labeled cases, other
  initialisation); the fold's ``val`` cases only feed nnU-Net's online pseudo-Dice.
* ACDC (SSL4MIS h5 and lists), converted by ``nnunet_ssl_convert_acdc``: test.list's 20 patients are the test set
  (imagesTs/labelsTs), the one fold labels train.list's first 7 patients (SSL4MIS's 136 slices, 10 %) and leaves
  the other 63 unlabeled; val.list's 10 patients are the validation cases.

Every trainer runs as a short-schedule variant (``<Trainer>_bench_<budget>``, written into the benchmark's own
``nnUNet_extTrainer`` folder): the budget's epochs x iterations and batch size for all, and no final validation
(the test set is scored instead). Then ``nnUNetv2_predict`` with checkpoint_final on imagesTs and
``nnunet_ssl_evaluate`` against labelsTs.

CPU budgets predict without test-time mirroring (4x fewer forwards, the same for every trainer). All commands
run with ``OMP_WAIT_POLICY=PASSIVE`` unless set (see ``bench_common.nnunet_env``).

``--repeats N`` trains every (trainer, fold) N times (other initialisation and sampling; repetition r > 0 keeps its
models in ``nnUNet_results_rep<r>``); the table gives mean and spread over all runs.

Resumable: a run whose checkpoint_final exists is not trained again (an interrupted one continues with ``--c``),
predictions and scores that exist are kept. The results table is printed at the end and written next to a plot.
"""
import argparse
import glob
import json
import os
import sys
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

#: nnU-Net id and folder of each dataset, and its foreground labels (value: name), all scored
DATASETS = {
    "hippocampus": dict(id=bc.DATASET_ID, name=bc.DATASET_NAME, labels={1: "anterior", 2: "posterior"}),
    "acdc": dict(id=bc.ACDC_ID, name=bc.ACDC_NAME, labels={1: "RV", 2: "MYO", 3: "LV"}),
}

#: dataset, configuration, labeled fraction (Hippocampus; ACDC has SSL4MIS's split), folds, schedule, batch size
#: (None = the plans'), device, test-time mirroring
BUDGETS = {
    "smoke": dict(dataset="hippocampus", configuration="2d", fraction=0.05, folds=[0], epochs=1, iterations=2,
                  val_iterations=1, batch_size=4, device="cpu", tta=False),
    "cpu-1h": dict(dataset="hippocampus", configuration="2d", fraction=0.05, folds=[0], epochs=30, iterations=12,
                   val_iterations=2, batch_size=2, device="cpu", tta=False),
    "gpu": dict(dataset="hippocampus", configuration="3d_fullres", fraction=0.05, folds=[0, 1, 2], epochs=100,
                iterations=250, val_iterations=50, batch_size=None, device="cuda", tta=True),
    "acdc-smoke": dict(dataset="acdc", configuration="2d", fraction=None, folds=[0], epochs=1, iterations=2,
                       val_iterations=1, batch_size=4, device="cpu", tta=False),
    # sized (not measured) to fit the six trainers into about 20 minutes of one GPU
    "acdc-gpu": dict(dataset="acdc", configuration="2d", fraction=None, folds=[0], epochs=10, iterations=50,
                     val_iterations=10, batch_size=8, device="cuda", tta=True),
}

VARIANTS = textwrap.dedent('''
    """Short-schedule variants of nnUNetTrainer and every nnunet-ssl trainer for the label-efficiency benchmark
    (written by benchmarks/label_efficiency.py)."""
    import copy

    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunet_ssl.trainers as trainers

    SCHEDULES = {schedules!r}


    def _variant(base, tag, schedule):
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            if schedule["batch_size"] is not None:
                plans = copy.deepcopy(plans)
                plans["configurations"][configuration]["batch_size"] = schedule["batch_size"]
            base.__init__(self, plans, configuration, fold, dataset_json, device)
            self.num_epochs = schedule["epochs"]
            self.num_iterations_per_epoch = schedule["iterations"]
            self.num_val_iterations_per_epoch = schedule["val_iterations"]
            self.save_every = max(1, schedule["epochs"] // 6)  # an interrupted run loses little (resumable)

        def perform_actual_validation(self, save_probabilities=False):
            self.print_to_log_file("benchmark variant: no final validation (the benchmark scores the test set)")

        return type(base.__name__ + "_bench_" + tag, (base,), {{
            "__init__": __init__, "perform_actual_validation": perform_actual_validation, "__module__": __name__}})


    for _tag, _schedule in SCHEDULES.items():
        for _base in [nnUNetTrainer] + [getattr(trainers, name) for name in trainers.__all__]:
            _cls = _variant(_base, _tag, _schedule)
            globals()[_cls.__name__] = _cls
''')


def budget_tag(budget: str) -> str:
    return budget.replace("-", "")


def write_variants(workdir: str) -> None:
    schedules = {budget_tag(name): {k: b[k] for k in ("epochs", "iterations", "val_iterations", "batch_size")}
                 for name, b in BUDGETS.items()}
    os.makedirs(os.path.join(workdir, "ext"), exist_ok=True)
    with open(os.path.join(workdir, "ext", "benchmark_trainers.py"), "w") as f:
        f.write(VARIANTS.format(schedules=schedules))


def prepare(budget: dict, workdir: str) -> dict:
    """The budget's dataset converted, planned, preprocessed and split; returns the benchmark environment."""
    configurations = (budget["configuration"],)
    if budget["dataset"] == "acdc":
        return bc.prepare_acdc(workdir, configurations)
    env = bc.prepare_hippocampus(workdir, configurations)
    bc.write_splits(env, budget["fraction"], workdir)
    return env


def labeled_cases(env: dict, dataset: dict, folds) -> str:
    """How many labeled and unlabeled training cases the first fold has, from splits_final.json; exits when a fold
    is not in it (nnU-Net would silently train on a random split of all cases, all labeled)."""
    splits_file = os.path.join(env["nnUNet_preprocessed"], dataset["name"], "splits_final.json")
    with open(splits_file) as f:
        splits = json.load(f)
    if max(folds) >= len(splits):
        raise SystemExit(f"error: fold {max(folds)} is not in {splits_file} ({len(splits)} fold(s))")
    split = splits[folds[0]]
    return f"{len(split['train'])} labeled + {len(split.get('unlabeled', []))} unlabeled training cases"


def run_one(env, budget: dict, tag: str, trainer: str, fold: int, out: str, test_images: str, test_labels: str):
    """Train (or continue), predict the test images, score them. Each stage is skipped when its output exists."""
    variant = f"{trainer}_bench_{tag}"
    configuration = budget["configuration"]
    dataset = DATASETS[budget["dataset"]]
    model = os.path.join(env["nnUNet_results"], dataset["name"], f"{variant}__nnUNetPlans__{configuration}")
    fold_dir = os.path.join(model, f"fold_{fold}")
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "commands.log")
    if not os.path.isfile(os.path.join(fold_dir, "checkpoint_final.pth")):
        resume = ["--c"] if os.path.isfile(os.path.join(fold_dir, "checkpoint_latest.pth")) else []
        start = time.time()
        bc.run([bc.bin_path("nnUNetv2_train"), str(dataset["id"]), configuration, str(fold), "-tr", variant,
                "-device", budget["device"], *resume], env, log)
        with open(os.path.join(out, "train_time.json"), "w") as f:
            json.dump({"seconds": time.time() - start, "resumed": bool(resume)}, f)
    pred = os.path.join(out, "pred")
    n_test = len(glob.glob(os.path.join(test_images, "*.nii.gz")))
    if len(glob.glob(os.path.join(pred, "*.nii.gz"))) < n_test:
        args = [bc.bin_path("nnUNetv2_predict"), "-i", test_images, "-o", pred, "-d", str(dataset["id"]),
                "-c", configuration, "-f", str(fold), "-tr", variant, "-chk", "checkpoint_final.pth",
                "-device", budget["device"]]
        if budget["device"] == "cpu":
            args += ["-npp", "1", "-nps", "1"]
        if not budget["tta"]:
            args.append("--disable_tta")
        bc.run(args, env, log)
    scores = os.path.join(out, "scores.json")
    if not os.path.isfile(scores):
        labels = [str(label) for label in dataset["labels"]]
        bc.run([bc.bin_path("nnunet_ssl_evaluate"), pred, test_labels, "-o", scores, "-l", *labels, "-np", "2"],
               env, log)
    return fold_dir


def pseudo_dice_curve(fold_dir: str):
    """nnU-Net's online validation pseudo-Dice (EMA) per epoch, from checkpoint_final's log."""
    import torch
    checkpoint = torch.load(os.path.join(fold_dir, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    return [float(v) for v in checkpoint["logging"]["ema_fg_dice"]]


def summarise(records: list, labels) -> list:
    """Per trainer: mean and std over its runs (folds x repeats) of the test metrics (foreground mean and per
    label)."""
    import numpy as np
    rows = []
    for trainer in dict.fromkeys(r["trainer"] for r in records):
        runs = [r for r in records if r["trainer"] == trainer]
        row = {"trainer": trainer, "runs": len(runs), "folds": sorted({r["fold"] for r in runs})}
        for key in ("dice", *(f"dice_{label}" for label in labels), "hd95", "asd", "train_minutes"):
            values = np.array([r[key] for r in runs if r.get(key) is not None], dtype=float)
            row[key] = (float(values.mean()), float(values.std())) if len(values) else None
        rows.append(row)
    baseline = next((r for r in rows if r["trainer"] == "nnUNetTrainer"), None)
    for row in rows:
        row["gain"] = row["dice"][0] - baseline["dice"][0] if baseline else None
    return rows


def record(trainer: str, fold: int, out: str, labels) -> dict:
    with open(os.path.join(out, "scores.json")) as f:
        scores = json.load(f)
    fg = scores["foreground_mean"]
    per_label = scores["mean"]
    timing_file = os.path.join(out, "train_time.json")
    timing = json.load(open(timing_file)) if os.path.isfile(timing_file) else None
    return {"trainer": trainer, "fold": fold, "dice": fg["Dice"], "hd95": fg.get("HD95"), "asd": fg.get("ASD"),
            **{f"dice_{label}": per_label[str(label)]["Dice"] for label in labels},
            "train_minutes": timing["seconds"] / 60 if timing and not timing["resumed"] else None}


def fmt(value, digits=3):
    if value is None:
        return "n/a"
    mean, std = value
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(rows: list, budget: dict, labels: dict) -> str:
    lines = [f"{budget['dataset']}: test set of {budget['n_test']} held-out cases; {len(budget['folds'])} fold(s) x "
             f"{budget['repeats']} repeat(s); {budget['labeled']} (fold {budget['folds'][0]}); {budget['epochs']} x "
             f"{budget['iterations']} iterations, batch {budget['batch_size'] or 'from plans'}, "
             f"{budget['configuration']}, test-time mirroring {'on' if budget['tta'] else 'off'}; mean ± std over "
             f"the runs (std 0 with one run).", "",
             "| Trainer | Dice (fg mean) | Δ vs nnUNetTrainer | " + "".join(f"Dice {n} | " for n in labels.values())
             + "HD95 mm | ASD mm | train min |", "|---|---|---|" + "---|" * len(labels) + "---|---|---|"]
    for r in rows:
        gain = "n/a" if r["gain"] is None else f"{r['gain']:+.3f}"
        per_label = "".join(f"{fmt(r[f'dice_{label}'])} | " for label in labels)
        lines.append(f"| {r['trainer']} | {fmt(r['dice'])} | {gain} | {per_label}"
                     f"{fmt(r['hd95'], 2)} | {fmt(r['asd'], 2)} | {fmt(r['train_minutes'], 1)} |")
    return "\n".join(lines)


def plot(curves: dict, rows: list, records: list, budget: dict, path: str) -> None:
    """Left: nnU-Net's validation pseudo-Dice versus iterations per method (mean over runs); right: test Dice,
    mean and std over runs with every run as a dot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = {r["trainer"]: "grey" if r["trainer"] == "nnUNetTrainer" else f"C{i}" for i, r in enumerate(rows)}
    for trainer, per_fold in curves.items():
        n = min(len(c) for c in per_fold)
        mean = np.mean([c[:n] for c in per_fold], axis=0)
        left.plot(np.arange(1, n + 1) * budget["iterations"], mean, label=trainer, marker=".", color=colors[trainer])
    left.set_xlabel("training iterations")
    left.set_ylabel("validation pseudo-Dice (nnU-Net EMA, fold's val cases)")
    left.set_title("Dice versus iterations")
    left.legend(fontsize=8)
    names = [r["trainer"].replace("nnUNetTrainer", "") or "nnUNet" for r in rows]
    right.bar(names, [r["dice"][0] for r in rows], yerr=[r["dice"][1] for r in rows], capsize=4,
              color=[colors[r["trainer"]] for r in rows], alpha=0.8)
    for x, r in enumerate(rows):
        dice = [rec["dice"] for rec in records if rec["trainer"] == r["trainer"]]
        right.scatter([x] * len(dice), dice, color="black", s=12, zorder=3)
    right.set_ylabel(f"test Dice, foreground mean ({budget['n_test']} held-out cases)")
    right.set_title(f"{budget['dataset']}, {budget['labeled']}, {budget['configuration']}", fontsize=9)
    right.tick_params(axis="x", rotation=20)
    dice = [rec["dice"] for rec in records]
    right.set_ylim(max(0.0, min(dice) - 0.1), min(1.0, max(dice) + 0.05))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu-1h")
    parser.add_argument("--workdir", default=bc.DEFAULT_WORKDIR, help="nnU-Net folders and runs (default %(default)s)")
    parser.add_argument("--trainers", nargs="+", help="subset of trainers (default: nnUNetTrainer and all SSL ones)")
    parser.add_argument("--folds", type=int, nargs="+", help="override the budget's folds")
    parser.add_argument("--repeats", type=int, default=1, help="runs per trainer and fold (default 1)")
    parser.add_argument("--plot", help="PNG path (default benchmarks/label_efficiency_<budget>.png; smoke budgets: "
                                       "in the workdir)")
    args = parser.parse_args(argv)

    budget = dict(BUDGETS[args.budget], repeats=args.repeats)
    if args.folds:
        budget["folds"] = args.folds
    tag = budget_tag(args.budget)
    dataset = DATASETS[budget["dataset"]]
    env = prepare(budget, args.workdir)
    write_variants(args.workdir)
    budget["labeled"] = labeled_cases(env, dataset, budget["folds"])
    raw = os.path.join(env["nnUNet_raw"], dataset["name"])
    test_images, test_labels = os.path.join(raw, "imagesTs"), os.path.join(raw, "labelsTs")
    budget["n_test"] = len(glob.glob(os.path.join(test_labels, "*.nii.gz")))

    trainers = args.trainers or bc.trainer_names()
    runs = [(r, fold, trainer) for r in range(args.repeats) for fold in budget["folds"] for trainer in trainers]
    records, curves = [], {}
    start = time.time()
    for i, (repeat, fold, trainer) in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {trainer} fold {fold} repeat {repeat} ({(time.time() - start) / 60:.1f} min "
              f"elapsed)", flush=True)
        out = os.path.join(args.workdir, "label_efficiency", args.budget, f"fold_{fold}",
                           *([f"rep_{repeat}"] if repeat else []), trainer)
        run_env = dict(env, nnUNet_results=env["nnUNet_results"] + (f"_rep{repeat}" if repeat else ""))
        fold_dir = run_one(run_env, budget, tag, trainer, fold, out, test_images, test_labels)
        records.append(dict(record(trainer, fold, out, dataset["labels"]), repeat=repeat))
        curves.setdefault(trainer, []).append(pseudo_dice_curve(fold_dir))
        print(f"    test Dice {records[-1]['dice']:.3f}", flush=True)

    rows = summarise(records, dataset["labels"])
    text = table(rows, budget, dataset["labels"])
    print("\n" + text)
    results_dir = os.path.join(args.workdir, "label_efficiency", args.budget)
    with open(os.path.join(results_dir, "results.json"), "w") as f:
        json.dump({"budget": budget, "records": records, "summary": rows, "curves": curves}, f, indent=1)
    with open(os.path.join(results_dir, "table.md"), "w") as f:
        f.write(text + "\n")
    published = os.path.join(bc.REPO, "benchmarks", f"label_efficiency_{tag}.png")
    smoke = args.budget.endswith("smoke")
    plot(curves, rows, records, budget, args.plot or (os.path.join(results_dir, "plot.png") if smoke else published))
    print(f"total {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
