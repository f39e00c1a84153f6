"""Converters that turn the semi-supervised benchmarks (LA, ACDC) and any labeled image folder into nnU-Net raw
datasets. LA and ACDC also get the literature's labeled/unlabeled split as ``splits_final.json``."""
