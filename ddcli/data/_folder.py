"""`folder:PATH` datasets: an ImageFolder tree with train/ and test/ (or val/) splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ddcli.data._realdata import RealData, labels_tensor, normalized_tensor
from ddcli.errors import ConfigError, DatasetNotFoundError

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
# Modes with one intensity channel (LA's alpha is dropped like RGBA's is).
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
_LAYOUT_HINT = "one subfolder per class in each split, e.g. train/cat/001.png and test/cat/101.png"


def load_folder(path: str) -> RealData:
    """Load `PATH/train` and `PATH/test` (or `PATH/val`) as a `RealData` named `folder:<abs PATH>`.

    Class names are the class folder names, sorted; both splits must have the
    same ones. Images are read as grayscale if every image is single-channel,
    else as RGB, and must all be square and of one size (they are not resized).
    The normalisation mean and std are computed per channel on the training split.
    """
    if not path.strip():
        raise ConfigError("folder: needs a path, e.g. folder:./my_images")
    top = Path(path).expanduser().absolute()
    if not top.is_dir():
        raise DatasetNotFoundError(f"dataset folder {top} does not exist; {_LAYOUT_HINT}")
    train_dir = top / "train"
    test_dir = next((top / s for s in ("test", "val") if (top / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DatasetNotFoundError(f"{top} needs train/ and test/ (or val/) subfolders; {_LAYOUT_HINT}")

    train_classes, train_files = _scan(train_dir)
    test_classes, test_files = _scan(test_dir)
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise ConfigError(
            f"{top}: class folders differ between train/ and {test_dir.name}/ "
            f"(only in train: {', '.join(only_train) or '-'}; "
            f"only in {test_dir.name}: {', '.join(only_test) or '-'})"
        )
    present = {label for _, label in train_files}
    empty = [c for i, c in enumerate(train_classes) if i not in present]
    if empty:
        raise ConfigError(f"{train_dir}: class folders without images: {', '.join(empty)}")
    if not test_files:
        raise ConfigError(f"{test_dir} has no images; {_LAYOUT_HINT}")

    mode = "L" if all(_mode(p) in _GRAY_MODES for p, _ in train_files + test_files) else "RGB"
    train_u8, train_y = _read(train_files, mode, reference=train_files[0][0])
    test_u8, test_y = _read(test_files, mode, reference=train_files[0][0])
    mean, std = _channel_stats(train_u8)
    return RealData(
        name=f"folder:{top}",
        train_x=normalized_tensor(train_u8, mean, std),
        train_y=labels_tensor(train_y),
        test_x=normalized_tensor(test_u8, mean, std),
        test_y=labels_tensor(test_y),
        classes=train_classes,
        mean=mean,
        std=std,
    )


def _scan(split: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Sorted class names and `(image path, label)` pairs, skipping hidden and non-image files."""
    classes = sorted(d.name for d in split.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ConfigError(f"{split} has no class folders; {_LAYOUT_HINT}")
    files = [
        (p, label)
        for label, name in enumerate(classes)
        for p in sorted((split / name).rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    ]
    return classes, files


def _mode(path: Path) -> str:
    # Image.open only parses the header, so this pass is cheap.
    try:
        with Image.open(path) as img:
            return img.mode
    except (OSError, UnidentifiedImageError) as exc:
        raise ConfigError(f"can't read image {path}: {exc}") from None


def _read(files: list[tuple[Path, int]], mode: str, reference: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode every image as `mode` into one uint8 `(N, C, H, W)` array, checking sizes."""
    channels = 1 if mode == "L" else 3
    with Image.open(reference) as img:
        width, height = img.size
    if width != height:
        raise ConfigError(f"images must be square, but {reference} is {width}x{height}; resize them first")
    out = np.empty((len(files), channels, height, width), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with Image.open(path) as img:
                if img.size != (width, height):
                    raise ConfigError(
                        f"images must all be one size: {path} is {img.size[0]}x{img.size[1]} "
                        f"but {reference} is {width}x{height}; resize them first"
                    )
                pixels = np.asarray(img.convert(mode), dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise ConfigError(f"can't read image {path}: {exc}") from None
        out[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return out, np.array([label for _, label in files], dtype=np.int64)


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 `(N, C, H, W)` pixels, in [0, 1] units."""
    means, stds = [], []
    for c in range(images.shape[1]):
        channel = images[:, c].astype(np.float64) / 255
        means.append(float(channel.mean()))
        # A constant channel would divide by zero; leave it unscaled instead.
        stds.append(float(channel.std()) or 1.0)
    return tuple(means), tuple(stds)
