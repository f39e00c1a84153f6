"""Image files by case id, for the commands that read whole folders of images or segmentations."""
import os
from typing import Dict

from nnunet_ssl.errors import SSLConfigError

#: file endings SimpleITK reads that medical images come in
IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl")


def case_files(folder: str) -> Dict[str, str]:
    """Case id (file name without its ending) -> path, for the image files in ``folder``; other files are
    ignored, two files of one case are an error."""
    if not os.path.isdir(folder):
        raise SSLConfigError(f"{folder} is not a folder")
    files: Dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        ending = next((e for e in IMAGE_ENDINGS if name.endswith(e)), None)
        if ending is None or name.startswith("."):
            continue
        case = name[:-len(ending)]
        if case in files:
            raise SSLConfigError(f"{os.path.join(folder, name)} and {files[case]} are two files of the same case")
        files[case] = os.path.join(folder, name)
    return files
