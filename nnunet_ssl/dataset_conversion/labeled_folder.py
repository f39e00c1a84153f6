"""A folder of labeled images (plus, optionally, a folder of unlabeled ones) as an nnU-Net raw dataset for SSL.

Images and labels are matched by file name (a label may carry a suffix: ``--label-suffix _mask`` pairs
``img1.png`` with ``img1_mask.png``). One kind of input per dataset:

* medical images (NIfTI, NRRD, MHA, ... read with SimpleITK), 2D or 3D, with one channel or several (a 4D file or
  a vector image; each channel becomes its own file ``_0000``, ``_0001``, ...). Written as NIfTI, each label on its
  image's grid after a check that the two geometries match (e.g. MSD Hippocampus: TrainingSet/images + labels).
* 2D images (PNG, JPEG, TIFF, BMP), grey or colour, written in nnU-Net's natural-image convention: one PNG per case
  (``case_0000.png``; a colour image is one file that nnU-Net reads as the 3 channels R, G, B), labels as PNG. An
  alpha channel is dropped. Labels must be grey (a colour label whose channels are equal counts as grey) and not
  JPEG, whose lossy compression changes label values.

Label values must be 0..K, except that binary masks saved as 0/255 (usual for 2D masks) become 0/1. Label names
come from ``--labels`` or default to label_1 .. label_K. The images of ``--unlabeled`` go, converted the same way,
to ``imagesUnlabeled/`` for ``nnunet_ssl_preprocess_unlabeled``, and ``--test-images``/``--test-labels`` to
``imagesTs``/``labelsTs`` for scoring predictions with ``nnunet_ssl_evaluate``. No split is written: train fold
``all``, or make a semi-supervised split with ``nnunet_ssl_split --raw`` and plan with
``nnunet_ssl_plan_and_preprocess`` (which never reads the unlabeled cases' labels), or split after
nnUNetv2_plan_and_preprocess with ``nnunet_ssl_split``.
"""
import argparse
import os
import sys
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.dataset_conversion.common import (
    FILE_ENDING, add_dataset_arguments, build_raw_dataset, check_label_values, exit_on_config_error,
    label_on_image_grid, preview, progress, raw_dataset_path, read_image, write_channels)
from nnunet_ssl.errors import SSLConfigError
from nnunet_ssl.image_files import IMAGE_ENDINGS, MEDICAL_ENDINGS, NATURAL_ENDINGS, case_files, ending_of

PNG = ".png"


def parse_labels(text: str) -> Dict[str, int]:
    """``background=0,anterior=1,...`` -> {"background": 0, "anterior": 1, ...}; values must be 0..K."""
    labels = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if not name.strip() or not value.strip().isdigit():
            raise SSLConfigError(f"--labels: expected name=value pairs like background=0,tumor=1, got {item!r}")
        labels[name.strip()] = int(value)
    if sorted(labels.values()) != list(range(len(labels))):
        raise SSLConfigError(f"--labels: values must be 0, 1, ..., K once each (0 = background), got {labels}")
    return labels


# ---- reading ---------------------------------------------------------------------------------------------------
def read_medical_channels(path: str, case_id: str) -> List[sitk.Image]:
    """The channels of a 2D/3D medical image: one, or one per component of a vector image or volume of a 4D one."""
    image = read_image(path, case_id)
    if image.GetNumberOfComponentsPerPixel() > 1:
        return [sitk.VectorIndexSelectionCast(image, c) for c in range(image.GetNumberOfComponentsPerPixel())]
    if image.GetDimension() == 4:
        return [image[:, :, :, c] for c in range(image.GetSize()[3])]
    if image.GetDimension() not in (2, 3):
        raise SSLConfigError(f"{case_id}: {path} is a {image.GetDimension()}D image; expected 2D, 3D or 4D")
    return [image]


def read_natural_image(path: str, case_id: str) -> np.ndarray:
    """A 2D grey (H, W) or RGB (H, W, 3) image of 8 or 16 bits, as nnU-Net's PNG convention stores it."""
    array = _imread(path, case_id)
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise SSLConfigError(f"{case_id}: {path} has shape {array.shape}; expected a 2D grey or RGB(A) image")
    if array.dtype not in (np.uint8, np.uint16):
        raise SSLConfigError(f"{case_id}: {path} has {array.dtype} pixels, which PNG cannot hold; save 8- or 16-bit "
                             f"images (or convert them to NIfTI)")
    return array


def read_natural_label(path: str, case_id: str) -> np.ndarray:
    if path.lower().endswith((".jpg", ".jpeg")):
        raise SSLConfigError(f"{case_id}: {path} is a JPEG label; its lossy compression changes label values. "
                             f"Use PNG, BMP or TIFF labels.")
    label = _imread(path, case_id)
    if label.ndim == 3 and label.shape[-1] in (3, 4):
        if not (np.array_equal(label[..., 0], label[..., 1]) and np.array_equal(label[..., 0], label[..., 2])):
            raise SSLConfigError(f"{case_id}: {path} is a colour label image; labels must be grey images holding "
                                 f"one value per class")
        label = label[..., 0]
    if label.ndim != 2:
        raise SSLConfigError(f"{case_id}: label {path} has shape {label.shape}; expected a 2D grey image")
    return label


def _imread(path: str, case_id: str) -> np.ndarray:
    from skimage import io

    try:
        return io.imread(path)
    except Exception as e:
        raise SSLConfigError(f"{case_id}: cannot read {path} ({type(e).__name__}: {e})") from e


def _label_values(label: np.ndarray, case_id: str) -> set:
    values = np.unique(label)
    if values.min() < 0 or not np.all(values == np.round(values)):
        raise SSLConfigError(f"{case_id}: label values must be non-negative integers, found {values[:10].tolist()}")
    return set(values.astype(int).tolist())


# ---- the two kinds of dataset ----------------------------------------------------------------------------------
class MedicalImages:
    """NIfTI output, one file per channel, labels checked against their image's geometry."""
    file_ending = FILE_ENDING

    @staticmethod
    def read_channels(path: str, case_id: str) -> list:
        return read_medical_channels(path, case_id)

    @staticmethod
    def read_label(path: str, case_id: str) -> sitk.Image:
        return read_image(path, case_id)

    @staticmethod
    def label_array(label: sitk.Image) -> np.ndarray:
        return sitk.GetArrayFromImage(label)

    @staticmethod
    def channel_names(num_channels: int, names: Optional[List[str]]) -> List[str]:
        if names is None and num_channels > 1:
            raise SSLConfigError(f"the images have {num_channels} channels: name each with --modality, e.g. "
                                 f"--modality T1,T1c,T2,FLAIR ('CT' selects nnU-Net's CT normalisation)")
        return names or ["MRI"]

    @staticmethod
    def write_image(folder: str, images_folder: str, case_id: str, channels: list) -> None:
        write_channels(folder, images_folder, case_id, channels)

    @staticmethod
    def write_label(folder: str, labels_folder: str, case_id: str, array: np.ndarray, label: sitk.Image,
                    channels: list) -> None:
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(label)
        image = label_on_image_grid(channels[0], image, case_id)
        sitk.WriteImage(image, os.path.join(folder, labels_folder, f"{case_id}{FILE_ENDING}"))


class NaturalImages:
    """nnU-Net's PNG convention for 2D grey or colour images (NaturalImage2DIO)."""
    file_ending = PNG

    @staticmethod
    def read_channels(path: str, case_id: str) -> list:
        image = read_natural_image(path, case_id)
        return [image] if image.ndim == 2 else [image[..., c] for c in range(3)]

    @staticmethod
    def read_label(path: str, case_id: str) -> np.ndarray:
        return read_natural_label(path, case_id)

    @staticmethod
    def label_array(label: np.ndarray) -> np.ndarray:
        return label

    @staticmethod
    def channel_names(num_channels: int, names: Optional[List[str]]) -> List[str]:
        return names or (["R", "G", "B"] if num_channels == 3 else ["grey"])

    @staticmethod
    def write_image(folder: str, images_folder: str, case_id: str, channels: list) -> None:
        from skimage import io

        image = channels[0] if len(channels) == 1 else np.stack(channels, axis=-1)
        io.imsave(os.path.join(folder, images_folder, f"{case_id}_0000{PNG}"), image, check_contrast=False)

    @staticmethod
    def write_label(folder: str, labels_folder: str, case_id: str, array: np.ndarray, label: np.ndarray,
                    channels: list) -> None:
        from skimage import io

        if array.shape != channels[0].shape:
            raise SSLConfigError(f"{case_id}: image size {channels[0].shape} and label size {array.shape} differ")
        io.imsave(os.path.join(folder, labels_folder, f"{case_id}{PNG}"), array, check_contrast=False)


def kind_of_dataset(files: Iterable[str]):
    """MedicalImages or NaturalImages, from the file endings; a mix of both kinds is an error."""
    files = list(files)
    natural = [f for f in files if ending_of(f, NATURAL_ENDINGS)]
    medical = [f for f in files if ending_of(f, MEDICAL_ENDINGS)]
    if natural and medical:
        raise SSLConfigError(f"the folders mix 2D images ({natural[0]}) and medical images ({medical[0]}); "
                             f"convert one kind of data per dataset")
    return NaturalImages if natural else MedicalImages


# ---- conversion ------------------------------------------------------------------------------------------------
def convert_labeled_folder(images_dir: str, labels_dir: str, dataset_id: int, name: str,
                           modality: Optional[str] = None, labels: Optional[Dict[str, int]] = None,
                           overwrite: bool = False, unlabeled_dir: Optional[str] = None, label_suffix: str = "",
                           test_images_dir: Optional[str] = None, test_labels_dir: Optional[str] = None) -> str:
    """Convert the image/label pairs (training cases, and test cases if given) and the images of ``unlabeled_dir``
    into ``nnUNet_raw/DatasetXXX_<name>``; return that folder. ``modality``: channel name(s), comma-separated."""
    pairs = {"Tr": _pairs(images_dir, labels_dir, label_suffix)}
    if test_images_dir or test_labels_dir:
        if not (test_images_dir and test_labels_dir):
            raise SSLConfigError("give both --test-images and --test-labels")
        pairs["Ts"] = _pairs(test_images_dir, test_labels_dir, label_suffix)
    unlabeled = case_files(unlabeled_dir) if unlabeled_dir else {}
    if unlabeled_dir and not unlabeled:
        raise SSLConfigError(f"no image files ({', '.join(IMAGE_ENDINGS)}) in {unlabeled_dir}")
    groups = {"labeled": pairs["Tr"], "test": pairs.get("Ts", {}), "unlabeled": unlabeled}
    for first, second in (("labeled", "unlabeled"), ("labeled", "test"), ("test", "unlabeled")):
        both = sorted(set(groups[first]) & set(groups[second]))
        if both:
            raise SSLConfigError(f"{preview(both)}: the same case name among the {first} and the {second} images")
    kind = kind_of_dataset([path for group in pairs.values() for pair in group.values() for path in pair]
                           + list(unlabeled.values()))

    all_pairs = [(case_id, label) for group in pairs.values() for case_id, (_, label) in sorted(group.items())]
    values = set().union(*(_label_values(kind.label_array(kind.read_label(label, case_id)), case_id)
                           for case_id, label in progress(all_pairs, "reading label values")))
    binary_255 = values <= {0, 255} and 255 in values
    if binary_255:
        values = {0, 1}
        print("note: labels hold only 0 and 255 (binary masks); 255 is written as 1", file=sys.stderr)
    if labels is None:
        labels = {"background": 0, **{f"label_{k}": k for k in range(1, max(values) + 1)}}
    first_image, first_id = next((pair[0], case_id) for case_id, pair in sorted(pairs["Tr"].items()))
    num_channels = len(kind.read_channels(first_image, first_id))
    names = [n.strip() for n in modality.split(",")] if modality else None
    if names is not None and len(names) != num_channels:
        raise SSLConfigError(f"--modality names {len(names)} channel(s), but {first_image} has {num_channels}")
    channel_names = dict(enumerate(kind.channel_names(num_channels, names)))

    def channels_of(path: str, case_id: str) -> list:
        channels = kind.read_channels(path, case_id)
        if len(channels) != num_channels:
            raise SSLConfigError(f"{case_id}: {path} has {len(channels)} channel(s), {first_image} has "
                                 f"{num_channels}; all images of a dataset need the same channels")
        return channels

    with build_raw_dataset(dataset_id, name, sorted(pairs["Tr"]), sorted(pairs.get("Ts", {})), None, overwrite,
                           unlabeled_ids=sorted(unlabeled), file_ending=kind.file_ending,
                           channel_names=channel_names, labels=dict(labels),
                           license="not recorded (see the data's source)",
                           converted_by="nnunet_ssl_convert_folder") as folder:
        for subset, group in pairs.items():
            for case_id, (image_path, label_path) in progress(sorted(group.items()), f"{name} images{subset}"):
                channels = channels_of(image_path, case_id)
                label = kind.read_label(label_path, case_id)
                array = kind.label_array(label)
                if binary_255:
                    array = array == 255
                check_label_values(array, labels.values(), case_id)
                array = array.astype(np.uint8 if max(labels.values()) < 256 else np.uint16)
                kind.write_image(folder, f"images{subset}", case_id, channels)
                kind.write_label(folder, f"labels{subset}", case_id, array, label, channels)
        for case_id in progress(sorted(unlabeled), f"{name} imagesUnlabeled"):
            kind.write_image(folder, "imagesUnlabeled", case_id, channels_of(unlabeled[case_id], case_id))
    target = raw_dataset_path(dataset_id, name)
    print(f"{target}: {len(pairs['Tr'])} labeled, {len(unlabeled)} unlabeled and {len(pairs.get('Ts', {}))} test "
          f"cases, channels {list(channel_names.values())}, labels {labels}", file=sys.stderr)
    return target


def _pairs(images_dir: str, labels_dir: str, label_suffix: str) -> Dict[str, tuple]:
    """Case id -> (image file, label file)."""
    images, label_files = case_files(images_dir), case_files(labels_dir, suffix=label_suffix)
    unpaired = sorted(set(images) ^ set(label_files))
    if unpaired:
        raise SSLConfigError(f"{images_dir} and {labels_dir} must hold the same file names"
                             f"{f' (labels ending in {label_suffix})' if label_suffix else ''}; unpaired: "
                             f"{preview(unpaired)}")
    if not images:
        raise SSLConfigError(f"no image files ({', '.join(IMAGE_ENDINGS)}) in {images_dir}")
    return {case_id: (images[case_id], label_files[case_id]) for case_id in images}


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--images", required=True, help="folder of labeled images")
    parser.add_argument("-l", "--labels-dir", required=True, help="folder of labels with the images' file names")
    parser.add_argument("-u", "--unlabeled", help="folder of unlabeled images (become imagesUnlabeled/)")
    parser.add_argument("--test-images", help="folder of test images (become imagesTs/)")
    parser.add_argument("--test-labels", help="folder of their labels (become labelsTs/)")
    parser.add_argument("--label-suffix", default="",
                        help="what label file names add to the image's name, e.g. _mask for img1_mask.png")
    add_dataset_arguments(parser)
    parser.add_argument("-n", "--name", required=True, help="dataset name: the folder becomes DatasetXXX_<name>")
    parser.add_argument("--modality", help="channel name(s) for dataset.json, comma-separated, one per channel; "
                                           "'CT' selects nnU-Net's CT normalisation (default: MRI for medical "
                                           "images, R,G,B for colour and grey for grey 2D images)")
    parser.add_argument("--labels", help="label names and values, e.g. background=0,anterior=1,posterior=2 "
                                         "(default: label_1..label_K from the data)")
    args = parser.parse_args(argv)
    with exit_on_config_error():
        labels = parse_labels(args.labels) if args.labels else None
        convert_labeled_folder(args.images, args.labels_dir, args.dataset_id, args.name, args.modality, labels,
                               args.overwrite, args.unlabeled, args.label_suffix, args.test_images,
                               args.test_labels)


if __name__ == "__main__":
    main()
