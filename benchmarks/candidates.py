"""Candidate settings searched on validation cases (label-efficiency benchmark, ``--trainers NAME``): small
subclasses of the package's trainers, one class attribute changed each. The chosen setting becomes the package
default; the paper's setting stays in the package as ``<Trainer>_paper``. Results: benchmarks/RESULTS.md."""

__all__ = []
