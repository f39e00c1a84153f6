"""Evaluation of predicted segmentations with the metrics the semi-supervised segmentation papers report."""
