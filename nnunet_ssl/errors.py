"""One exception type for user-facing configuration and input errors.

Command-line tools print its message and exit with status 1 instead of showing a traceback. Inside nnU-Net's own
commands (``nnUNetv2_train`` raises it at training start) :func:`install_excepthook` does the same: an uncaught
SSLConfigError prints as ``error: <message>``. It stays an ordinary exception that Python code can catch; set
``NNUNET_SSL_TRACEBACK=1`` to see the traceback of an uncaught one.
"""
import os
import sys


class SSLConfigError(ValueError):
    pass


def _print_config_error(exc_type, exc, tb):
    if issubclass(exc_type, SSLConfigError) and not os.environ.get("NNUNET_SSL_TRACEBACK"):
        print(f"error: {exc}\n(nnunet-ssl configuration error; NNUNET_SSL_TRACEBACK=1 shows the traceback)",
              file=sys.stderr)
    else:
        _print_config_error.previous(exc_type, exc, tb)


def install_excepthook() -> None:
    """Print uncaught SSLConfigErrors as one message; every other exception goes to the previous hook."""
    if sys.excepthook is not _print_config_error:
        _print_config_error.previous = sys.excepthook
        sys.excepthook = _print_config_error
