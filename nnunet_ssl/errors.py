"""One exception type for user-facing configuration and input errors.

Command-line tools print its message and exit with status 1 instead of showing a traceback; inside
``nnUNetv2_train`` it ends nnU-Net's traceback with a message naming the file or setting at fault.
"""


class SSLConfigError(ValueError):
    pass
