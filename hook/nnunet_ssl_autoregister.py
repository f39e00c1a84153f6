"""Makes ``nnUNetv2_train -tr <nnunet_ssl trainer>`` work with no set-up.

Run by ``nnunet_ssl_autoregister.pth`` at every interpreter start in the environment where nnunet-ssl is installed.
It appends the folder of nnunet_ssl's trainer index to nnU-Net's ``nnUNet_extTrainer`` search path, keeping the
user's own entries. It locates the package with ``find_spec`` (which works for editable installs too) and imports
nothing else, so interpreter start stays fast. Set ``NNUNET_SSL_NO_AUTOREGISTER=1`` to switch it off.
"""
import os


def _register():
    if os.environ.get("NNUNET_SSL_NO_AUTOREGISTER", "").lower() in ("1", "true", "yes"):
        return
    from importlib.util import find_spec

    spec = find_spec("nnunet_ssl")
    if spec is None or not spec.submodule_search_locations:
        return
    index_dir = os.path.join(list(spec.submodule_search_locations)[0], "_ext")
    entries = [e for e in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if e]
    if index_dir not in entries:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(entries + [index_dir])


try:
    _register()
except Exception:  # never break interpreter start; nnunet_ssl_check explains what is wrong
    pass
