"""Environment variables for training and predicting on a small CPU. The demo, the tests and the benchmarks set
them for the processes they start; a value the user has set is kept. They change speed only, never results.

* ``OMP_WAIT_POLICY=PASSIVE``: torch's OpenMP threads otherwise spin while they wait and starve nnU-Net's
  augmentation workers (a small 3d epoch 2.5x slower on 2 cores, single 2d forwards up to 30x; benchmarks/RESULTS.md).
* ``MALLOC_MMAP_MAX_=0`` and a large ``MALLOC_TRIM_THRESHOLD_``: glibc serves every allocation above 32 MB with a
  fresh ``mmap`` and returns it to the kernel when it is freed, so a tensor of that size costs one page fault per
  4 kB each time it is made. 3d feature maps of 3 or more patches (46-69 MB for Hippocampus at full resolution) are
  made and freed every step: CMEMS in 3d took 1.25 million page faults per step and 18 % of its time on them. With
  these two variables glibc keeps freed memory in its heap and reuses it. Read by glibc at process start, so they
  must be in the environment of the process that trains (a GPU's caching allocator has no such cost).
"""
from typing import Mapping

CPU_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(16 * 2 ** 30)}


def with_cpu_environment(env: Mapping[str, str]) -> dict:
    """``env`` with :data:`CPU_ENVIRONMENT` added where ``env`` does not set those variables itself."""
    return {**CPU_ENVIRONMENT, **env}
