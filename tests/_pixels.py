"""Tiny uint8-backed datasets (tensors, or an ImageFolder tree on disk) for pixel-space tests."""

import numpy as np
import torch
from PIL import Image

from ddcli.data import RealData
from ddcli.data._realdata import labels_tensor, normalized_tensor


def uint8_images(n, channels=3, hw=8, classes=3, seed=0):
    """(n, C, H, W) uint8 images whose classes differ by a bright square, and labels."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = g.integers(0, 120, size=(n, channels, hw, hw))
    for c in range(classes):
        r = (2 * c) % (hw - 2)
        x[y == c, :, r : r + 2, r : r + 2] += 120
    return x.astype(np.uint8), y


def uint8_data(name="toy", n_train=60, n_test=30, channels=3, hw=8, classes=3,
               mean=(0.4, 0.45, 0.5), std=(0.2, 0.25, 0.3)) -> RealData:
    """A RealData stored like the real loaders store theirs: (uint8 / 255 - mean) / std."""
    mean, std = mean[:channels], std[:channels]
    tx, ty = uint8_images(n_train, channels, hw, classes, seed=0)
    vx, vy = uint8_images(n_test, channels, hw, classes, seed=1)
    return RealData(name, normalized_tensor(tx, mean, std), labels_tensor(ty),
                    normalized_tensor(vx, mean, std), labels_tensor(vy),
                    [f"c{i}" for i in range(classes)], mean, std)


def folder_dataset(root, n_train=60, n_test=30, classes=3, hw=8):
    """Write an RGB ImageFolder tree (train/ and test/); return its `folder:` name."""
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = uint8_images(n, 3, hw, classes, seed)
        for i in range(n):
            d = root / split / f"c{y[i]}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i].transpose(1, 2, 0)).save(d / f"{i:03d}.png")
    return f"folder:{root}"


def unit(x_u8) -> torch.Tensor:
    """uint8 images as [0, 1] floats, exactly as torchvision's ToTensor makes them."""
    return torch.from_numpy(np.asarray(x_u8)).float().div(255)
