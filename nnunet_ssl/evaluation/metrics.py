"""Dice, IoU, HD95 and ASD of predicted segmentations, per case and per label, as the SSL papers report them.

Metrics (per case, per foreground label):
  Dice, IoU           overlap of the prediction and reference masks of the label.
  HD95, ASD           surface distances in mm, using the spacing in the reference file's header; left out for
                      formats without spacing (PNG, BMP, 2D TIFF: nnU-Net's natural-image reader).
  HD95_vox, ASD_vox   the same in voxels or pixels (spacing 1), the unit of the SSL papers' tables (UA-MT, LeFeD
                      and SSL4MIS call medpy's hd95/asd without spacing).
  Axes of size 1 (a 2D image stored as one slice) are dropped first, so a 2D image is measured in 2D.
  HD95 is medpy's hd95: the 95th percentile of the surface distances in both directions. ASD is medpy's asd: the
  mean distance from the prediction's surface voxels to the reference surface (directed, prediction -> reference),
  which is what those papers call ASD; it is not the symmetric ASSD.

Empty masks (per case and label):
  both empty          Dice 1, IoU 1, HD95 = ASD = 0: the label is correctly absent.
  exactly one empty   Dice 0, IoU 0, distances undefined: null in the JSON, an empty cell in the CSV.
  Means and stds of a distance are taken over the cases where it is defined, and n_undefined counts, per label,
  the cases where it is not. The papers' code disagrees on this case (UA-MT scores an empty prediction 0 for every
  metric, so a missed structure gets a perfect distance; SSL4MIS has returned 0 and, later, penalties of 50 and 10),
  so no constant is made up here: report n_undefined next to the distance means. Unlike nnU-Net's summary.json,
  where Dice is NaN when both masks are empty, this rule scores that case as perfect.

Files: every format nnU-Net reads (NIfTI, .nrrd, .mha, .gipl, PNG, BMP, TIFF, ...), read with nnU-Net's own
reader/writer classes, chosen as nnU-Net chooses them: from the dataset.json given with -djfile (its file_ending and
overwrite_image_reader_writer), else from each file's ending. Predictions and references are matched by case name
(the file name without its ending).

Output: a JSON laid out like nnU-Net's summary.json (foreground_mean, mean, metric_per_case with labels as string
keys) plus std (population std over cases) and n_undefined per label, and a CSV beside it (same stem) with one row
per case and label.
"""
import argparse
import contextlib
import csv
import io
import json
import math
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from medpy.metric.binary import asd, hd95
from nnunetv2.configuration import default_num_processes
from tqdm import tqdm

from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.image_files import IMAGE_ENDINGS, case_files, ending_of

DISTANCE_METRICS = ("HD95", "ASD", "HD95_vox", "ASD_vox")
METRICS = ("Dice", "IoU") + DISTANCE_METRICS
DEFAULT_NUM_PROCESSES = min(default_num_processes, os.cpu_count() or 1)


def compute_case_metrics(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int],
                         spacing: Optional[Sequence[float]]) -> Dict[int, Dict[str, float]]:
    """Metrics of one case per label; ``spacing`` is in the arrays' axis order, None for a format without
    spacing (then no distances in mm). Undefined distances are NaN."""
    kept = [axis for axis, size in enumerate(ref.shape) if size > 1] or [0]
    # medpy takes the volume's outside as background, so along an axis of size 1 every voxel would be surface
    pred, ref = pred.reshape([pred.shape[a] for a in kept]), ref.reshape([ref.shape[a] for a in kept])
    spacing = None if spacing is None else [spacing[a] for a in kept]
    return {label: _label_metrics(pred == label, ref == label, spacing) for label in labels}


def _label_metrics(pred_mask: np.ndarray, ref_mask: np.ndarray,
                   spacing: Optional[Sequence[float]]) -> Dict[str, float]:
    distances = DISTANCE_METRICS if spacing is not None else ("HD95_vox", "ASD_vox")
    n_pred, n_ref = int(np.count_nonzero(pred_mask)), int(np.count_nonzero(ref_mask))
    if n_pred == 0 and n_ref == 0:
        return {"Dice": 1.0, "IoU": 1.0, **dict.fromkeys(distances, 0.0)}
    intersection = int(np.count_nonzero(pred_mask & ref_mask))
    overlap = {"Dice": 2 * intersection / (n_pred + n_ref),
               "IoU": intersection / (n_pred + n_ref - intersection)}
    if n_pred == 0 or n_ref == 0:
        return {**overlap, **dict.fromkeys(distances, math.nan)}
    # Cropping to the bounding box of both masks changes no distance (every surface voxel stays inside, and what lies
    # outside is background) but makes medpy's full-volume distance transforms cost the size of the structure.
    box = _bounding_box(pred_mask | ref_mask)
    pred_mask, ref_mask = pred_mask[box], ref_mask[box]
    in_mm = {} if spacing is None else {"HD95": float(hd95(pred_mask, ref_mask, voxelspacing=spacing)),
                                        "ASD": float(asd(pred_mask, ref_mask, voxelspacing=spacing))}
    return {**overlap, **in_mm,
            "HD95_vox": float(hd95(pred_mask, ref_mask)),
            "ASD_vox": float(asd(pred_mask, ref_mask))}


def _bounding_box(mask: np.ndarray) -> Tuple[slice, ...]:
    return tuple(slice(indices.min(), indices.max() + 1) for indices in np.nonzero(mask))


def evaluate_folders(pred_dir: str, ref_dir: str, output_json: Optional[str] = None,
                     labels: Optional[Sequence[int]] = None, num_processes: int = DEFAULT_NUM_PROCESSES,
                     dataset_json: Optional[str] = None, chill: bool = False) -> dict:
    """Evaluate every prediction in ``pred_dir`` against the reference of the same case in ``ref_dir``.

    Labels: ``labels`` if given, else the foreground labels of ``dataset_json`` if given, else every non-zero value
    found in the references. With ``chill``, references without a prediction are skipped instead of raising.
    Returns the summary (undefined values as None); writes it and the CSV when ``output_json`` is given.
    """
    if output_json is not None and not str(output_json).endswith(".json"):
        raise SSLConfigError(f"output file {output_json} must end with .json")
    pairs = _match_cases(pred_dir, ref_dir, chill)
    reader = _readers([path for pair in pairs.values() for path in pair], dataset_json)
    if labels is None:
        labels = _labels_from_dataset_json(dataset_json) if dataset_json else _labels_in_references(
            [(ref, reader[ending_of(ref)]) for _, ref in pairs.values()], num_processes)
    labels = sorted(int(label) for label in labels)
    if not labels:
        raise SSLConfigError(f"no foreground label to evaluate (the references in {ref_dir} contain only 0)")
    jobs = [(pred, ref, labels, reader[ending_of(pred)], reader[ending_of(ref)]) for pred, ref in pairs.values()]
    per_case = _map(_evaluate_case, jobs, num_processes, "evaluating")
    summary = _nan_to_none(_summarise(per_case, labels))
    if output_json is not None:
        _write_outputs(summary, list(pairs), Path(output_json))
    return summary


def _readers(files: List[str], dataset_json: Optional[str]) -> Dict[str, type]:
    """nnU-Net's reader/writer class for each file ending among ``files``, chosen as nnU-Net chooses it: from
    dataset.json (if given and its file_ending matches), else from the ending, trying an example file."""
    from nnunetv2.imageio.reader_writer_registry import (determine_reader_writer_from_dataset_json,
                                                         determine_reader_writer_from_file_ending)

    dataset = _read_json(dataset_json) if dataset_json else {}
    readers = {}
    for ending in sorted({ending_of(f) for f in files}):
        example = next(f for f in files if ending_of(f) == ending)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                if dataset.get("file_ending", "").lower() == ending.lower():
                    readers[ending] = determine_reader_writer_from_dataset_json(dataset, example, verbose=False)
                else:
                    readers[ending] = determine_reader_writer_from_file_ending(
                        ending.lower(), example, allow_nonmatching_filename=True, verbose=False)
            except RuntimeError:
                raise SSLConfigError(f"no nnU-Net reader can read {example}") from None
    return readers


def _match_cases(pred_dir: str, ref_dir: str, chill: bool) -> Dict[str, Tuple[str, str]]:
    """Case name -> (prediction file, reference file), sorted by case name."""
    predictions, references = case_files(pred_dir), case_files(ref_dir)
    if not predictions:
        raise SSLConfigError(f"no segmentation file ({', '.join(IMAGE_ENDINGS)}) in the prediction folder {pred_dir}")
    for case, pred in predictions.items():
        if case not in references:
            raise SSLConfigError(f"prediction {pred} has no reference named {case}<ending> in {ref_dir}")
    if not chill:
        for case, ref in references.items():
            if case not in predictions:
                raise SSLConfigError(f"reference {ref} has no prediction in {pred_dir} "
                                     "(use --chill to evaluate only the predicted cases)")
    return {case: (predictions[case], references[case]) for case in sorted(predictions)}


def _read_json(path: str) -> dict:
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError) as error:
        raise SSLConfigError(f"cannot read {path}: {error!r}") from error


def _labels_from_dataset_json(path: str) -> List[int]:
    label_values = _read_json(path).get("labels")
    if not isinstance(label_values, dict):
        raise SSLConfigError(f"{path} has no 'labels'")
    if any(not isinstance(value, int) for value in label_values.values()):
        raise SSLConfigError(f"{path} defines region-based labels, which nnunet_ssl_evaluate does not support; "
                             "pass the labels to evaluate with -l")
    return [value for name, value in label_values.items() if value != 0 and name != "ignore"]


def _labels_in_references(references: List[Tuple[str, type]], num_processes: int) -> List[int]:
    found = _map(_reference_labels, references, num_processes, "reading reference labels")
    return sorted(set().union(*found) - {0})


def _reference_labels(job: Tuple[str, type]) -> set:
    return {int(value) for value in np.unique(_read_segmentation(*job)[0])}


def _evaluate_case(job: Tuple[str, str, List[int], type, type]) -> dict:
    pred_file, ref_file, labels, pred_reader, ref_reader = job
    pred, _ = _read_segmentation(pred_file, pred_reader)
    ref, spacing = _read_segmentation(ref_file, ref_reader)
    if pred.shape != ref.shape:
        raise SSLConfigError(f"prediction {pred_file} has shape {pred.shape} but reference {ref_file} has "
                             f"shape {ref.shape}")
    return {"prediction_file": pred_file, "reference_file": ref_file,
            "metrics": compute_case_metrics(pred, ref, labels, spacing)}


def _read_segmentation(path: str, reader: type) -> Tuple[np.ndarray, Optional[Tuple[float, ...]]]:
    """The label array and its spacing (None for formats without spacing), both in nnU-Net's axis order."""
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            segmentation, properties = reader().read_seg(path)
    except Exception as error:
        raise SSLConfigError(f"cannot read {path} with nnU-Net's {reader.__name__}: {error}") from error
    spacing = None if issubclass(reader, NaturalImage2DIO) else tuple(float(s) for s in properties["spacing"])
    return segmentation[0], spacing


def _map(function, items: list, num_processes: int, description: str) -> list:
    """``function`` over ``items`` in order, with a progress bar; a spawn pool as nnU-Net uses, unless one process."""
    if num_processes <= 1 or len(items) <= 1:
        return [function(item) for item in tqdm(items, desc=description)]
    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(items))) as pool:
        return list(tqdm(pool.imap(function, items), total=len(items), desc=description))


def _summarise(per_case: List[dict], labels: List[int]) -> dict:
    metrics = list(per_case[0]["metrics"][labels[0]])
    if any(list(m) != metrics for case in per_case for m in case["metrics"].values()):
        raise SSLConfigError("some references have a spacing and others not (mixed file formats); evaluate them "
                             "separately")
    mean, std, n_undefined = {}, {}, {}
    for label in labels:
        values = {metric: np.array([case["metrics"][label][metric] for case in per_case]) for metric in metrics}
        defined = {metric: column[~np.isnan(column)] for metric, column in values.items()}
        mean[str(label)] = {metric: column.mean() if column.size else math.nan for metric, column in defined.items()}
        std[str(label)] = {metric: column.std() if column.size else math.nan for metric, column in defined.items()}
        n_undefined[str(label)] = int(np.isnan(values["HD95_vox"]).sum())
    foreground_mean = {metric: _mean_of_defined([means[metric] for means in mean.values()]) for metric in metrics}
    for case in per_case:
        case["metrics"] = {str(label): metrics for label, metrics in case["metrics"].items()}
    return {"foreground_mean": foreground_mean, "mean": mean, "std": std, "n_undefined": n_undefined,
            "metric_per_case": per_case}


def _mean_of_defined(values: List[float]) -> float:
    defined = [value for value in values if not math.isnan(value)]
    return sum(defined) / len(defined) if defined else math.nan


def _nan_to_none(value):
    """Plain floats with None for NaN, since JSON has no NaN."""
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value


def _write_outputs(summary: dict, cases: List[str], output_json: Path) -> None:
    output_json.parent.mkdir(parents=True, exist_ok=True)
    with open(output_json, "w") as file:
        json.dump(summary, file, indent=2, allow_nan=False)
    with open(output_json.with_suffix(".csv"), "w", newline="") as file:
        writer = csv.writer(file)
        metrics = list(summary["foreground_mean"])
        writer.writerow(["case", "label"] + metrics)
        for case, record in zip(cases, summary["metric_per_case"]):
            for label, values in record["metrics"].items():
                writer.writerow([case, label] + ["" if values[m] is None else values[m] for m in metrics])


def _print_means(summary: dict) -> None:
    for label, means in summary["mean"].items():
        stds = summary["std"][label]
        cells = [f"{metric} {_format(means[metric])} ± {_format(stds[metric])}" for metric in means]
        undefined = summary["n_undefined"][label]
        note = f"  ({undefined} case(s) with one empty mask: distances undefined)" if undefined else ""
        print(f"label {label}: " + ", ".join(cells) + note)


def _format(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet_ssl_evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pred_dir", help="folder with the predicted segmentations")
    parser.add_argument("ref_dir", help="folder with the reference segmentations (e.g. labelsTr or labelsTs)")
    parser.add_argument("-o", dest="output_json", default=None,
                        help="output JSON file; the CSV is written beside it with the same stem "
                             "(default: PRED_DIR/ssl_summary.json, leaving nnU-Net's summary.json alone)")
    label_source = parser.add_mutually_exclusive_group()
    label_source.add_argument("-l", "--labels", type=int, nargs="+", default=None,
                              help="labels to evaluate (default: the non-zero values found in the references)")
    label_source.add_argument("-djfile", dest="dataset_json", default=None,
                              help="dataset.json whose 'labels' give the labels to evaluate (0 and 'ignore' left "
                                   "out) and whose file_ending / overwrite_image_reader_writer choose nnU-Net's reader")
    parser.add_argument("-np", dest="num_processes", type=int, default=DEFAULT_NUM_PROCESSES,
                        help="number of worker processes (default: nnUNet_def_n_proc or 8, capped at the CPU count: "
                             f"{DEFAULT_NUM_PROCESSES} here)")
    parser.add_argument("--chill", action="store_true",
                        help="evaluate only the predicted cases instead of failing on references without prediction")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    output_json = args.output_json or os.path.join(args.pred_dir, "ssl_summary.json")
    try:
        summary = evaluate_folders(args.pred_dir, args.ref_dir, output_json, labels=args.labels,
                                   num_processes=args.num_processes, dataset_json=args.dataset_json, chill=args.chill)
    except SSLConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    _print_means(summary)
    if "HD95" not in summary["foreground_mean"]:
        print("surface distances in pixels only: the files carry no spacing")
    print(f"wrote {output_json} and {Path(output_json).with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
