"""Label-efficiency benchmark: nnU-Net on a few labeled cases alone versus every SSL trainer with the same labeled
cases plus the rest of the fold's training cases as unlabeled, the same schedule, scored on held-out test cases.

    python benchmarks/label_efficiency.py --budget hippo2d-l2   # the protocol: Hippocampus 2d, 2 labeled cases
    python benchmarks/label_efficiency.py --budget hippo2d-l1   # the exemplar setting: 1 labeled case
    python benchmarks/label_efficiency.py --budget gpu          # Hippocampus 3d_fullres, 5 %, one GPU
    python benchmarks/label_efficiency.py --budget acdc-gpu     # ACDC 2d, SSL4MIS split, one GPU

Data (../shared/data):
* MSD Hippocampus. A fixed, seeded 20 % of the cases is moved to imagesTs/labelsTs *before* planning, so no split
  can contain them and they are never trained on (not even as unlabeled cases). The rest is planned and
  preprocessed; ``nnunet_ssl_split --num-labeled N --folds 5`` (or ``--fraction F``) then makes nnU-Net's 5 folds,
  each with N labeled training cases and the fold's other training cases unlabeled. Each fold is one repetition
  (other labeled cases, other initialisation). Settings are chosen on the fold's ``val`` cases (nnU-Net's final
  validation, ``val Dice``), never on the test cases.
* ACDC (SSL4MIS h5 and lists), converted by ``nnunet_ssl_convert_acdc``: test.list's 20 patients are the test set
  (imagesTs/labelsTs), the one fold labels train.list's first 7 patients (SSL4MIS's 136 slices, 10 %) and leaves
  the other 63 unlabeled; val.list's 10 patients are the validation cases.

Rows: ``nnUNetTrainer`` (labeled cases only), ``nnUNetTrainer@3x`` (3x the iterations: shows whether the schedule
has converged, and is the equal-optimizer-steps control for LeFeD's 3 passes), ``nnUNetTrainer@full`` (every
training case of the fold with its label: the fully supervised ceiling), and every trainer of
``nnunet_ssl.trainers.__all__`` (defaults and ``_paper`` variants), self-training (``nnUNetTrainerPseudoLabel``
after ``nnunet_ssl_pseudolabel`` with the fold's nnUNetTrainer row as teacher: one round). ``--trainers`` also takes
the search candidates of ``benchmarks/candidates.py``.

Every row runs as a short-schedule variant (``<Trainer>_bench_<budget>``, written into the benchmark's own
``nnUNet_extTrainer`` folder): the budget's epochs x iterations and batch size for all, then nnU-Net's final
validation on the fold's val cases, ``nnUNetv2_predict`` with checkpoint_final on imagesTs and
``nnunet_ssl_evaluate`` against labelsTs. CPU budgets validate and predict without test-time mirroring (4x fewer
forwards, the same for every trainer). All commands run with ``OMP_WAIT_POLICY=PASSIVE`` unless set.

Output: a table (mean ± std over folds, the paired per-fold difference to nnUNetTrainer, the share of the gap to
the ceiling each row closes), a plot, and ``benchmarks/label_efficiency_<budget>.json`` (per row and fold the
foreground-mean test and validation Dice, with provenance: commit, versions, seeds, command, machine). Only a
report of the default rows updates those published files (``.json``, ``.png``); with ``--trainers`` (a subset, the
search candidates) they go to the workdir's ``label_efficiency/<budget>/`` beside ``table.md``, so that a partial
report never replaces the published one.

``--repeats N`` trains every (row, fold) N times (repetition r > 0 keeps its models in ``nnUNet_results_rep<r>``).
Resumable: a run whose checkpoint_final exists is not trained again (an interrupted one continues with ``--c``),
predictions and scores that exist are kept; ``--report-only`` summarises the finished runs without training.
"""
import argparse
import copy
import glob
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

#: nnunet_ssl_split's default seed (nnU-Net's cross-validation seed), for folds and labeled subsets
SPLIT_SEED = 12345

#: nnU-Net id and folder of each dataset, and its foreground labels (value: name), all scored
DATASETS = {
    "hippocampus": dict(id=bc.DATASET_ID, name=bc.DATASET_NAME, labels={1: "anterior", 2: "posterior"}),
    "acdc": dict(id=bc.ACDC_ID, name=bc.ACDC_NAME, labels={1: "RV", 2: "MYO", 3: "LV"}),
}

#: dataset, configuration, split (Hippocampus: labeled cases per fold or labeled fraction of the fold's training
#: cases; ACDC has SSL4MIS's split), folds, schedule, batch size (None = the plans'), device, test-time mirroring
BUDGETS = {
    "smoke": dict(dataset="hippocampus", configuration="2d", split=dict(num_labeled=2), folds=[0], epochs=1,
                  iterations=2, val_iterations=1, batch_size=4, device="cpu", tta=False),
    # the protocol (issue 12): 2 labeled Hippocampus cases per fold, the fold's other training cases unlabeled;
    # 3,000 iterations, as nnUNetTrainer was still learning at 1,000 (hippo2d-l2-short)
    "hippo2d-l2": dict(dataset="hippocampus", configuration="2d", split=dict(num_labeled=2), folds=[0, 1, 2],
                       epochs=60, iterations=50, val_iterations=10, batch_size=8, device="cpu", tta=False),
    # the exemplar setting (CMEMS's): 1 labeled case per fold
    "hippo2d-l1": dict(dataset="hippocampus", configuration="2d", split=dict(num_labeled=1), folds=[0, 1, 2],
                       epochs=60, iterations=50, val_iterations=10, batch_size=8, device="cpu", tta=False),
    # the schedule check that ruled out 1,000 iterations
    "hippo2d-l2-short": dict(dataset="hippocampus", configuration="2d", split=dict(num_labeled=2), folds=[0],
                             epochs=20, iterations=50, val_iterations=10, batch_size=8, device="cpu", tta=False),
    "gpu": dict(dataset="hippocampus", configuration="3d_fullres", split=dict(fraction=0.05), folds=[0, 1, 2],
                epochs=100, iterations=250, val_iterations=50, batch_size=None, device="cuda", tta=True),
    "acdc-smoke": dict(dataset="acdc", configuration="2d", split=None, folds=[0], epochs=1, iterations=2,
                       val_iterations=1, batch_size=4, device="cpu", tta=False),
    # sized (not measured) to fit the six trainers into about 20 minutes of one GPU
    "acdc-gpu": dict(dataset="acdc", configuration="2d", split=None, folds=[0], epochs=10, iterations=50,
                     val_iterations=10, batch_size=8, device="cuda", tta=True),
}

#: control rows: nnUNetTrainer at 3x the iterations (convergence check, and the equal-optimizer-steps control for
#: LeFeD's 3 passes), and nnUNetTrainer trained on every training case of the fold, labels of the unlabeled ones
#: included (the fully supervised ceiling)
CONTROLS = {"nnUNetTrainer@3x": dict(base="nnUNetTrainer", epochs_factor=3, full=False),
            "nnUNetTrainer@full": dict(base="nnUNetTrainer", epochs_factor=1, full=True)}
BASELINE, CEILING = "nnUNetTrainer", "nnUNetTrainer@full"
#: self-training rows: one round, the teacher is the fold's labeled-only nnUNetTrainer row
SELF_TRAINING = bc.NEEDS_PSEUDO_LABELS

#: extra trainer classes for the search of defaults on validation cases (benchmarks/candidates.py), imported by the
#: variants module like nnunet_ssl's trainers
CANDIDATES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "candidates.py")

class BenchmarkRun:
    """Mixin of every row's variant: the budget's batch size (``batch_size_override``; None keeps the plans') and,
    without test-time augmentation (``tta`` False), nnU-Net's final validation without mirroring, as the test set
    is predicted (--disable_tta)."""
    batch_size_override = None
    tta = True

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        if self.batch_size_override is not None:
            plans = copy.deepcopy(plans)
            plans["configurations"][configuration]["batch_size"] = self.batch_size_override
        super().__init__(plans, configuration, fold, dataset_json, device)

    def perform_actual_validation(self, save_probabilities=False):
        if not self.tta:
            self.inference_allowed_mirroring_axes = None
        super().perform_actual_validation(save_probabilities)


class LabelsOfUnlabeledCases:
    """Mixin of the fully supervised ceiling: trains on the fold's labeled and unlabeled cases, all with labels."""

    def do_split(self):
        tr_keys, val_keys = super().do_split()
        with open(os.path.join(self.preprocessed_dataset_folder_base, "splits_final.json")) as f:
            unlabeled = json.load(f)[self.fold].get("unlabeled", [])
        self.print_to_log_file(f"benchmark ceiling: {len(unlabeled)} unlabeled cases trained with labels")
        return list(tr_keys) + list(unlabeled), val_keys


def budget_tag(budget: str) -> str:
    return budget.replace("-", "")


def variant_name(row: str, tag: str) -> str:
    """The nnU-Net trainer class of a row: ``<Trainer>_bench_<tag>``, ``nnUNetTrainer_3x_bench_<tag>``, ..."""
    return row.replace("@", "_") + "_bench_" + tag


def variants(tag: str, budget: dict) -> list:
    """The budget's short-schedule variant of every row's trainer: nnUNetTrainer, the nnunet-ssl trainers, the
    search candidates and the control rows (an interrupted run loses at most a sixth of its epochs: resumable)."""
    import nnunet_ssl.trainers as trainers
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_ssl.variants import load_file_module, short_schedule

    def variant(base, row, epochs_factor=1, full=False):
        epochs = budget["epochs"] * epochs_factor
        mixins = [__file__ + ":BenchmarkRun"] + ([__file__ + ":LabelsOfUnlabeledCases"] if full else [])
        return short_schedule(base, variant_name(row, tag), epochs, budget["iterations"], budget["val_iterations"],
                              save_every=max(1, epochs // 6), mixins=mixins,
                              batch_size_override=budget["batch_size"], tta=budget["tta"])

    candidates = [f"{CANDIDATES_FILE}:{name}" for name in load_file_module(CANDIDATES_FILE).__all__]
    rows = [variant(base, base.__name__) for base in [nnUNetTrainer] + [getattr(trainers, n) for n in trainers.__all__]]
    rows += [variant(c, c.rpartition(":")[2]) for c in candidates]
    return rows + [variant(nnUNetTrainer, row, c["epochs_factor"], c["full"]) for row, c in CONTROLS.items()]


def write_variants(root: str) -> None:
    from nnunet_ssl.variants import write_variants_module

    write_variants_module(os.path.join(root, "ext"), "benchmark_trainers",
                          [v for name, budget in BUDGETS.items() for v in variants(budget_tag(name), budget)],
                          "Short-schedule variants of nnUNetTrainer, every nnunet-ssl trainer and the search "
                          "candidates for the label-efficiency benchmark (written by benchmarks/label_efficiency.py).")


def split_tag(split: dict) -> str:
    """``{'num_labeled': 2}`` -> ``l2``, ``{'fraction': 0.05}`` -> ``f0.05``."""
    return f"l{split['num_labeled']}" if "num_labeled" in split else f"f{split['fraction']}"


def dataset_root(budget: dict, workdir: str) -> str:
    """The nnU-Net folders of a budget: one per dataset and split (the split lives in the preprocessed folder)."""
    if budget["dataset"] == "acdc":
        return os.path.join(workdir, "acdc")
    return os.path.join(workdir, f"hippocampus_{split_tag(budget['split'])}")


def prepare(budget: dict, root: str) -> dict:
    """The budget's dataset converted, planned, preprocessed and split; returns the benchmark environment."""
    configurations = (budget["configuration"],)
    if budget["dataset"] == "acdc":
        return bc.prepare_acdc(root, configurations)
    env = bc.prepare_hippocampus(root, configurations)
    bc.write_splits(env, root, **budget["split"])
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


def run_one(env, budget: dict, tag: str, row: str, fold: int, out: str, test_images: str, test_labels: str):
    """Train (or continue), predict the test images, score them. Each stage is skipped when its output exists.
    The training's provenance (commit, versions, command) is kept in ``out/train_meta.json``."""
    variant = variant_name(row, tag)
    configuration = budget["configuration"]
    dataset = DATASETS[budget["dataset"]]
    model = os.path.join(env["nnUNet_results"], dataset["name"], f"{variant}__nnUNetPlans__{configuration}")
    fold_dir = os.path.join(model, f"fold_{fold}")
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "commands.log")
    if not os.path.isfile(os.path.join(fold_dir, "checkpoint_final.pth")):
        if row in SELF_TRAINING:
            make_pseudo_labels(env, budget, tag, fold, os.path.dirname(out), test_images, test_labels, log)
        resume = ["--c"] if os.path.isfile(os.path.join(fold_dir, "checkpoint_latest.pth")) else []
        start, provenance = time.time(), bc.provenance({"split": SPLIT_SEED})  # the code the run starts with
        bc.run([bc.bin_path("nnUNetv2_train"), str(dataset["id"]), configuration, str(fold), "-tr", variant,
                "-device", budget["device"], *resume], env, log)
        bc.write_json(os.path.join(out, "train_meta.json"),
                      {"seconds": time.time() - start, "resumed": bool(resume), "provenance": provenance})
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


def make_pseudo_labels(env, budget: dict, tag: str, fold: int, fold_out: str, test_images: str, test_labels: str,
                       log: str) -> None:
    """The teacher (this fold's nnUNetTrainer row, trained first if needed) labels the fold's unlabeled cases with
    ``nnunet_ssl_pseudolabel`` (resumable: pseudo-labels it already made are kept)."""
    run_one(env, budget, tag, BASELINE, fold, os.path.join(fold_out, BASELINE), test_images, test_labels)
    args = [bc.bin_path("nnunet_ssl_pseudolabel"), "-d", str(DATASETS[budget["dataset"]]["id"]),
            "-c", budget["configuration"], "-f", str(fold), "-tr", variant_name(BASELINE, tag),
            "-device", budget["device"], "--disable_progress_bar"]
    if budget["device"] == "cpu":
        args += ["-nps", "1"]
    if not budget["tta"]:
        args.append("--disable_tta")
    bc.run(args, env, log)


def pseudo_dice_curve(fold_dir: str):
    """nnU-Net's online validation pseudo-Dice (EMA) per epoch, from checkpoint_final's log."""
    import torch
    checkpoint = torch.load(os.path.join(fold_dir, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    return [float(v) for v in checkpoint["logging"]["ema_fg_dice"]]


def record(row: str, fold: int, out: str, fold_dir: str, labels) -> dict:
    """One run's numbers: test metrics (foreground mean and per label), the validation Dice of nnU-Net's final
    validation on the fold's val cases (what settings are chosen on), training minutes and commit."""
    with open(os.path.join(out, "scores.json")) as f:
        scores = json.load(f)
    fg, per_label = scores["foreground_mean"], scores["mean"]
    meta_file = os.path.join(out, "train_meta.json")
    meta = json.load(open(meta_file)) if os.path.isfile(meta_file) else {}
    val_file = os.path.join(fold_dir, "validation", "summary.json")
    val = json.load(open(val_file))["foreground_mean"]["Dice"] if os.path.isfile(val_file) else None
    return {"trainer": row, "fold": fold, "dice": fg["Dice"], "val_dice": val, "hd95": fg.get("HD95"),
            "asd": fg.get("ASD"), **{f"dice_{label}": per_label[str(label)]["Dice"] for label in labels},
            "train_minutes": meta["seconds"] / 60 if meta and not meta["resumed"] else None,
            "commit": meta.get("provenance", {}).get("commit")}


def _mean_std(values) -> tuple:
    import numpy as np
    values = np.array([v for v in values if v is not None], dtype=float)
    return (float(values.mean()), float(values.std())) if len(values) else None


def summarise(records: list, labels) -> list:
    """Per row: mean and std over its runs (folds x repeats) of the test metrics; the paired per-fold difference
    to nnUNetTrainer (mean and std over the folds both have); the share of the gap between nnUNetTrainer and the
    ceiling that the row closes (mean difference over mean gap, on the folds all three have)."""
    def by_fold(row):
        runs = {}
        for r in records:
            if r["trainer"] == row:
                runs.setdefault(r["fold"], []).append(r["dice"])
        return {fold: sum(d) / len(d) for fold, d in runs.items()}

    base, ceiling = by_fold(BASELINE), by_fold(CEILING)
    rows = []
    for trainer in dict.fromkeys(r["trainer"] for r in records):
        runs = [r for r in records if r["trainer"] == trainer]
        row = {"trainer": trainer, "runs": len(runs), "folds": sorted({r["fold"] for r in runs})}
        for key in ("dice", "val_dice", *(f"dice_{label}" for label in labels), "hd95", "asd", "train_minutes"):
            row[key] = _mean_std(r.get(key) for r in runs)
        own = by_fold(trainer)
        paired = [own[f] - base[f] for f in own if f in base]
        row["gain"] = _mean_std(paired) if paired and trainer != BASELINE else None
        both = [f for f in own if f in base and f in ceiling]
        gap = sum(ceiling[f] - base[f] for f in both)
        row["gap_closed"] = (sum(own[f] - base[f] for f in both) / gap
                             if both and gap > 0 and trainer not in (BASELINE, CEILING) else None)
        rows.append(row)
    return rows


def fmt(value, digits=3, signed=False):
    if value is None:
        return "n/a"
    mean, std = value
    return f"{mean:{'+' if signed else ''}.{digits}f} ± {std:.{digits}f}"


def table(rows: list, budget: dict, labels: dict) -> str:
    lines = [f"{budget['dataset']}: test set of {budget['n_test']} held-out cases; {len(budget['folds'])} fold(s) x "
             f"{budget['repeats']} repeat(s); {budget['labeled']} (fold {budget['folds'][0]}); {budget['epochs']} x "
             f"{budget['iterations']} iterations, batch {budget['batch_size'] or 'from plans'}, "
             f"{budget['configuration']}, test-time mirroring {'on' if budget['tta'] else 'off'}; mean ± std over "
             f"the runs (std 0 with one run); Δ: paired per-fold difference to nnUNetTrainer; gap closed: share of "
             f"the ceiling's lead over nnUNetTrainer.", "",
             "| Trainer | folds | test Dice (fg mean) | Δ vs nnUNetTrainer | gap closed | val Dice | "
             + "".join(f"Dice {n} | " for n in labels.values()) + "HD95 mm | ASD mm | train min |",
             "|---|---|---|---|---|---|" + "---|" * len(labels) + "---|---|---|"]
    for r in rows:
        gap = "n/a" if r["gap_closed"] is None else f"{100 * r['gap_closed']:+.0f} %"
        per_label = "".join(f"{fmt(r[f'dice_{label}'])} | " for label in labels)
        lines.append(f"| {r['trainer']} | {','.join(map(str, r['folds']))} | {fmt(r['dice'])} | "
                     f"{fmt(r['gain'], signed=True)} | {gap} | {fmt(r['val_dice'])} | {per_label}"
                     f"{fmt(r['hd95'], 2)} | {fmt(r['asd'], 2)} | {fmt(r['train_minutes'], 1)} |")
    return "\n".join(lines)


def published_results(budget_name: str, budget: dict, records: list) -> dict:
    """The committed summary: per row and fold the foreground-mean test Dice (mean over repeats), the same for
    the validation Dice, each run's test and validation Dice where a row and fold has several (``repeats``), and
    the provenance of the aggregation and of every run (``<row>/fold_<f>``, ``.../rep_<r>`` for repeat r > 0)."""
    def per_run(key):
        table = {}
        for r in records:
            if r.get(key) is not None:
                table.setdefault(r["trainer"], {}).setdefault(str(r["fold"]), []).append(r[key])
        return table

    def mean(key):
        return {row: {fold: sum(v) / len(v) for fold, v in folds.items()} for row, folds in per_run(key).items()}

    repeated = {row: {fold: {"dice": runs, "val_dice": per_run("val_dice").get(row, {}).get(fold)}
                      for fold, runs in folds.items() if len(runs) > 1}
                for row, folds in per_run("dice").items()}
    return {"budget": budget_name, "folds": budget["folds"], "dice": mean("dice"), "val_dice": mean("val_dice"),
            "repeats": {row: folds for row, folds in repeated.items() if folds},
            "settings": {k: budget[k] for k in ("dataset", "configuration", "split", "epochs", "iterations",
                                                "batch_size", "device", "tta", "labeled", "n_test", "repeats")},
            "provenance": dict(bc.provenance({"split": SPLIT_SEED, "test_cases": bc.TEST_SEED}),
                               runs={run_key(r): r["commit"] for r in records},
                               carried={run_key(r): r["carried"] for r in records if r.get("carried")})}


def run_key(record: dict) -> str:
    """``<row>/fold_<f>``, ``.../rep_<r>`` for repeat r > 0: a run's key in the published provenance."""
    return f"{record['trainer']}/fold_{record['fold']}" + (f"/rep_{record['repeat']}" if record.get("repeat") else "")


#: the settings a published run must share with the budget for a report to carry it over
CARRIED_SETTINGS = ("dataset", "configuration", "split", "epochs", "iterations", "batch_size", "device", "tta")


def carried_records(published: dict, budget: dict, rows, present) -> list:
    """The runs of the published JSON (``published_results``) that this workdir lacks: test and validation Dice of
    each (row, fold) of ``rows`` x the budget's folds with no run in ``present`` (a set of (row, fold)), one record
    per repeat, with the run's commit and ``carried`` (the commit of the report that first published it). A workdir
    that was lost, or that holds other folds, thus keeps the runs already published instead of replacing them.
    Nothing is carried from a JSON of other settings."""
    settings = published.get("settings", {})
    if any(settings.get(key) != budget[key] for key in CARRIED_SETTINGS):
        return []
    provenance = published["provenance"]
    runs, earlier = provenance.get("runs", {}), provenance.get("carried", {})
    records = []
    for row in rows:
        for fold in map(str, budget["folds"]):
            if (row, int(fold)) in present or fold not in published["dice"].get(row, {}):
                continue
            repeated = published.get("repeats", {}).get(row, {}).get(fold)
            dice = repeated["dice"] if repeated else [published["dice"][row][fold]]
            val = (repeated or {}).get("val_dice") or [published["val_dice"].get(row, {}).get(fold)] * len(dice)
            for repeat, (d, v) in enumerate(zip(dice, val)):
                record = {"trainer": row, "fold": int(fold), "dice": d, "val_dice": v, "hd95": None, "asd": None,
                          "train_minutes": None, "repeat": repeat}
                key = run_key(record)
                records.append(dict(record, commit=runs.get(key), carried=earlier.get(key, provenance["commit"])))
    return records


def carried_note(records: list) -> str:
    """The table's footnote naming the carried runs, per fold and publishing commit ('' when none)."""
    carried = {}
    for r in records:
        if r.get("carried"):
            carried.setdefault(f"fold {r['fold']}, published at {r['carried'][:7]}", {})[r["trainer"]] = None
    return "".join(f"\n\nCarried over from the published JSON (test and validation Dice only; these runs are not in "
                   f"this workdir), {where}: {', '.join(names)}" for where, names in carried.items())


def published_prefix(budget_name: str, trainers, results_dir: str) -> str:
    """Where the JSON and plot go: the tracked ``benchmarks/label_efficiency_<tag>`` for a report of the default rows
    (``trainers`` None), the run's results folder for a subset or a smoke budget."""
    publish = not trainers and not budget_name.endswith("smoke")
    return os.path.join(os.path.join(bc.REPO, "benchmarks") if publish else results_dir,
                        f"label_efficiency_{budget_tag(budget_name)}")


def plot(curves: dict, rows: list, records: list, budget: dict, path: str) -> None:
    """Left: nnU-Net's validation pseudo-Dice versus iterations per row (mean over runs); right: test Dice,
    mean and std over runs with every run as a dot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
    colors = {r["trainer"]: "grey" if r["trainer"].startswith(BASELINE + "@") or r["trainer"] == BASELINE
              else f"C{i}" for i, r in enumerate(rows)}
    for trainer, per_fold in curves.items():
        n = min(len(c) for c in per_fold)
        mean = np.mean([c[:n] for c in per_fold], axis=0)
        left.plot(np.arange(1, n + 1) * budget["iterations"], mean, label=trainer, marker=".", markersize=3,
                  color=colors[trainer], linestyle="--" if "@" in trainer else "-")
    left.set_xlabel("training iterations")
    left.set_ylabel("validation pseudo-Dice (nnU-Net EMA, fold's val cases)")
    left.set_title("Dice versus iterations")
    if curves:  # none for runs carried over from the published JSON
        left.legend(fontsize=7)
    names = [r["trainer"].replace("nnUNetTrainer", "") or "nnUNet" for r in rows]
    right.bar(names, [r["dice"][0] for r in rows], yerr=[r["dice"][1] for r in rows], capsize=4,
              color=[colors[r["trainer"]] for r in rows], alpha=0.8)
    for x, r in enumerate(rows):
        dice = [rec["dice"] for rec in records if rec["trainer"] == r["trainer"]]
        right.scatter([x] * len(dice), dice, color="black", s=12, zorder=3)
    right.set_ylabel(f"test Dice, foreground mean ({budget['n_test']} held-out cases)")
    right.set_title(f"{budget['dataset']}, {budget['labeled']}, {budget['configuration']}", fontsize=9)
    right.tick_params(axis="x", rotation=30)
    dice = [rec["dice"] for rec in records]
    right.set_ylim(max(0.0, min(dice) - 0.1), min(1.0, max(dice) + 0.05))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def default_rows() -> list:
    """nnUNetTrainer, its controls and every nnunet-ssl trainer, self-training included (new ones are picked up
    from ``nnunet_ssl.trainers.__all__``)."""
    return [BASELINE, *CONTROLS, *bc.trainer_names(self_training=True)[1:]]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="hippo2d-l2")
    parser.add_argument("--workdir", default=bc.DEFAULT_WORKDIR, help="nnU-Net folders and runs (default %(default)s)")
    parser.add_argument("--trainers", nargs="+", metavar="ROW",
                        help="rows to run (default: nnUNetTrainer, " + ", ".join(CONTROLS) + " and every SSL "
                             "trainer); also candidate classes of benchmarks/candidates.py")
    parser.add_argument("--folds", type=int, nargs="+", help="override the budget's folds")
    parser.add_argument("--repeats", type=int, default=1, help="runs per trainer and fold (default 1)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: summarise the finished runs (resume the others later)")
    parser.add_argument("--plot", help="PNG path (default benchmarks/label_efficiency_<budget>.png; in the workdir "
                                       "with --trainers and for smoke budgets)")
    args = parser.parse_args(argv)

    budget = dict(BUDGETS[args.budget], repeats=args.repeats)
    if args.folds:
        budget["folds"] = args.folds
    tag = budget_tag(args.budget)
    dataset = DATASETS[budget["dataset"]]
    root = dataset_root(budget, args.workdir)
    env = prepare(budget, root)
    if not args.report_only:  # the trainings of the workdir import it: a report from another checkout must not
        write_variants(root)  # point them at its code
    budget["labeled"] = labeled_cases(env, dataset, budget["folds"])
    raw = os.path.join(env["nnUNet_raw"], dataset["name"])
    test_images, test_labels = os.path.join(raw, "imagesTs"), os.path.join(raw, "labelsTs")
    budget["n_test"] = len(glob.glob(os.path.join(test_labels, "*.nii.gz")))

    rows = args.trainers or default_rows()
    runs = [(r, fold, row) for r in range(args.repeats) for fold in budget["folds"] for row in rows]
    records, curves = [], {}
    start = time.time()
    results_dir = os.path.join(root, "label_efficiency", args.budget)
    for i, (repeat, fold, row) in enumerate(runs, 1):
        out = os.path.join(results_dir, f"fold_{fold}", *([f"rep_{repeat}"] if repeat else []), row)
        run_env = dict(env, nnUNet_results=env["nnUNet_results"] + (f"_rep{repeat}" if repeat else ""))
        fold_dir = os.path.join(run_env["nnUNet_results"], dataset["name"],
                                f"{variant_name(row, tag)}__nnUNetPlans__{budget['configuration']}", f"fold_{fold}")
        if args.report_only and not os.path.isfile(os.path.join(out, "scores.json")):
            continue
        print(f"[{i}/{len(runs)}] {row} fold {fold} repeat {repeat} ({(time.time() - start) / 60:.1f} min "
              f"elapsed)", flush=True)
        if not args.report_only:
            run_one(run_env, budget, tag, row, fold, out, test_images, test_labels)
        records.append(dict(record(row, fold, out, fold_dir, dataset["labels"]), repeat=repeat))
        curves.setdefault(row, []).append(pseudo_dice_curve(fold_dir))
        print(f"    test Dice {records[-1]['dice']:.3f}, validation Dice {records[-1]['val_dice']}", flush=True)
    published = published_prefix(args.budget, args.trainers, results_dir)
    if os.path.isfile(published + ".json"):
        with open(published + ".json") as f:
            records += carried_records(json.load(f), budget, rows, {(r["trainer"], r["fold"]) for r in records})
    if not records:
        raise SystemExit("no finished run to summarise")

    summary = summarise(records, dataset["labels"])
    text = table(summary, budget, dataset["labels"])
    text += carried_note(records)
    print("\n" + text)
    bc.write_json(os.path.join(results_dir, "results.json"),
                  {"provenance": bc.provenance({"split": SPLIT_SEED, "test_cases": bc.TEST_SEED}), "budget": budget,
                   "records": records, "summary": summary, "curves": curves})
    with open(os.path.join(results_dir, "table.md"), "w") as f:
        f.write(text + "\n")
    bc.write_json(published + ".json", published_results(args.budget, budget, records))
    print(f"wrote {published}.json")
    plot(curves, summary, records, budget, args.plot or published + ".png")
    print(f"total {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
