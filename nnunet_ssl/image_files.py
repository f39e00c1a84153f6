"""Image files by case id, for the commands that read whole folders of images or segmentations."""
import os
from typing import Dict, Optional, Sequence

from nnunet_ssl.errors import SSLConfigError

#: file endings of medical images (SimpleITK reads them, with their spacing)
MEDICAL_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl")
#: 2D image files, grey or colour (scikit-image reads them, as nnU-Net's NaturalImage2DIO does; no spacing)
NATURAL_ENDINGS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
IMAGE_ENDINGS = MEDICAL_ENDINGS + NATURAL_ENDINGS


def ending_of(name: str, endings: Sequence[str] = IMAGE_ENDINGS) -> Optional[str]:
    """The ending of ``name`` among ``endings`` (case-insensitive, as written in ``name``), or None."""
    return next((name[-len(e):] for e in endings if name.lower().endswith(e)), None)


def case_files(folder: str, endings: Sequence[str] = IMAGE_ENDINGS, suffix: str = "") -> Dict[str, str]:
    """Case id (file name without ``suffix`` and its ending) -> path, for the image files in ``folder``; other
    files are ignored, two files of one case are an error."""
    if not os.path.isdir(folder):
        raise SSLConfigError(f"{folder} is not a folder")
    files: Dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        ending = ending_of(name, endings)
        if ending is None or name.startswith("."):
            continue
        case = name[:-len(ending)]
        if suffix:
            if not case.endswith(suffix):
                continue
            case = case[:-len(suffix)]
        if case in files:
            raise SSLConfigError(f"{os.path.join(folder, name)} and {files[case]} are two files of the same case")
        files[case] = os.path.join(folder, name)
    return files
