"""Semi-supervised learning trainers for nnU-Net v2.

Kept import-light on purpose: the interpreter-start hook locates this package without importing it, and
command-line tools import torch and nnunetv2 only when they need them.
"""
__version__ = "0.1.0"
