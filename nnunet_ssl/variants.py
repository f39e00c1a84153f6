"""Short-schedule trainer variants (fewer epochs and iterations) for demos, tests and benchmarks, written as a module
into an ``nnUNet_extTrainer`` folder.

``nnUNetv2_train -tr NAME`` finds a trainer by class name: it imports every module of each ``nnUNet_extTrainer``
folder (the folder on ``sys.path`` while it searches) and takes the first attribute called NAME. A variant is
nnU-Net's pattern, a small subclass whose settings are class attributes. :func:`write_variants_module` writes each
variant as a plain class statement, so the classes are defined at module level, picklable by name, and read as the
example a user would write. nnU-Net's own settings (``num_epochs``, ...) work as class attributes on any trainer
through :class:`~nnunet_ssl.nnunet_internals.ClassAttributeSettings`, which a variant of a plain ``nnUNetTrainer``
gets as an extra base.

Bases and mixins are classes, or ``"/path/file.py:Class"`` for classes of a file outside any package (a
benchmark's or a test's); the module loads such a file with :func:`load_file_module`.
"""
import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, Sequence, Tuple, Union

from nnunet_ssl.nnunet_internals import ClassAttributeSettings

ClassRef = Union[type, str]


@dataclass(frozen=True)
class Variant:
    """A subclass named ``name`` of ``base`` (after ``mixins``) with class attributes ``attributes``."""
    name: str
    base: ClassRef
    mixins: Tuple[ClassRef, ...] = ()
    attributes: Dict[str, object] = field(default_factory=dict)


def short_schedule(base: ClassRef, name: str, epochs: int = None, iterations: int = None, val_iterations: int = None,
                   save_every: int = None, mixins: Sequence[ClassRef] = (), **attributes) -> Variant:
    """A variant of ``base`` with nnU-Net's schedule settings (``num_epochs``, ``num_iterations_per_epoch``,
    ``num_val_iterations_per_epoch``, ``save_every_epochs``); a setting left None keeps the base's."""
    schedule = {"num_epochs": epochs, "num_iterations_per_epoch": iterations,
                "num_val_iterations_per_epoch": val_iterations, "save_every_epochs": save_every}
    return Variant(name, base, tuple(mixins), {**{k: v for k, v in schedule.items() if v is not None}, **attributes})


class NoMirroring:
    """Mixin: no mirroring, in training augmentation nor at validation and prediction (no test-time
    augmentation: 8x faster inference)."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None


def load_file_module(path: str):
    """The module of a Python file outside any package, loaded once per process under a name derived from its path
    (registered in ``sys.modules``, so its classes pickle by name within the process tree)."""
    path = os.path.abspath(path)
    name = "nnunet_ssl_file_" + re.sub(r"\W", "_", os.path.splitext(path)[0]).strip("_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or not os.path.isfile(path):
            raise FileNotFoundError(f"no Python file {path} (a base or mixin of a trainer variant)")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _resolve(ref: ClassRef) -> type:
    if isinstance(ref, type):
        return ref
    path, _, name = ref.rpartition(":")
    return getattr(load_file_module(path), name)


def _importing_module(cls: type) -> str:
    """The shortest dotted prefix of the class's module that exposes it (``nnunet_ssl.trainers``, not
    ``nnunet_ssl.trainers.dmd``)."""
    parts = cls.__module__.split(".")
    for i in range(1, len(parts) + 1):
        module = ".".join(parts[:i])
        if getattr(importlib.import_module(module), cls.__name__, None) is cls:
            return module
    raise ValueError(f"{cls.__qualname__} is not a module-level class of {cls.__module__}")


def variants_module_source(variants: Sequence[Variant], doc: str) -> str:
    """The source of a module defining ``variants`` (see :func:`write_variants_module`)."""
    imports: Dict[str, set] = {}  # module: names
    files: Dict[str, str] = {}  # path: alias
    classes = []
    for variant in variants:
        refs = list(variant.mixins)
        if not issubclass(_resolve(variant.base), ClassAttributeSettings):
            refs.append(ClassAttributeSettings)
        refs.append(variant.base)
        names = []
        for ref in refs:
            if isinstance(ref, str):
                path, _, name = ref.rpartition(":")
                alias = files.setdefault(os.path.abspath(path), re.sub(r"\W", "_", os.path.basename(path)[:-3]))
                imports.setdefault("nnunet_ssl.variants", set()).add("load_file_module")
                names.append(f"{alias}.{name}")
            else:
                imports.setdefault(_importing_module(ref), set()).add(ref.__name__)
                names.append(ref.__name__)
        body = "".join(f"    {k} = {v!r}\n" for k, v in variant.attributes.items()) or "    pass\n"
        classes.append(f"class {variant.name}({', '.join(names)}):\n{body}")
    header = f'"""{doc}"""\n' + "".join(f"from {module} import {', '.join(sorted(names))}\n"
                                        for module, names in sorted(imports.items()))
    if files:
        header += "\n" + "".join(f"{alias} = load_file_module({path!r})\n" for path, alias in files.items())
    return header + "\n\n" + "\n\n".join(classes)


def write_variants_module(folder: str, module_name: str, variants: Sequence[Variant], doc: str) -> str:
    """Write ``variants`` as the module ``<folder>/<module_name>.py`` (``folder`` goes on ``nnUNet_extTrainer``);
    returns its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, module_name + ".py")
    with open(path, "w") as f:
        f.write(variants_module_source(variants, doc))
    return path
