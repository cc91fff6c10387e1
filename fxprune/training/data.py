"""Image data for the command line and the demo: uint8 tensors in memory, batched in torch.

Two sources, neither downloads anything:

- the synthetic :mod:`fxprune.demo.shapes` dataset;
- an image folder ``DIR/{train,test}/<class>/*.{jpg,jpeg,png}`` (CIFAR-10 unpacked as
  images is one), classes sorted by folder name, decoded once with ``torchvision.io``
  and resized to the model's input size.

:class:`ImageBatches` shuffles, augments (random crop of the image padded by an eighth
of its size, horizontal flip) and normalises whole batches; an epoch's batches depend
only on ``(seed, epoch)``, so :class:`fxprune.training.Trainer` resumes exactly.

Example:
    >>> from fxprune.demo.shapes import make_shapes
    >>> batches = ImageBatches(*make_shapes(64), batch_size=32, augment=False)
    >>> x, y = next(iter(batches)); x.dtype, tuple(x.shape), len(batches)
    (torch.float32, (32, 3, 32, 32), 2)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fxprune.errors import FxPruneError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class ImageBatches:
    """Shuffled, optionally augmented, normalised batches of in-memory uint8 images.

    Args:
        images: uint8 ``[N, 3, H, W]``.
        labels: int64 ``[N]``.
        batch_size: samples per batch.
        shuffle: draw a new order every epoch.
        augment: random crop (padding ``H // 8``) and horizontal flip.
        seed: base seed of shuffling and augmentation.
        mean, std: per-channel normalisation of images scaled to ``[0, 1]``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool = True,
                 augment: bool = True, seed: int = 0, mean: Sequence[float] = MEAN, std: Sequence[float] = STD):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise FxPruneError(f"ImageBatches expects uint8 images [N, C, H, W], got {images.dtype} "
                               f"{tuple(images.shape)}", hint="pass images as loaded by load_image_folder")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.augment, self.seed = batch_size, shuffle, augment, seed
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std).view(1, -1, 1, 1) * 255.0
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch whose order and augmentation the next pass uses."""
        self.epoch = epoch

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.numel() else 0

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.images[idx]
            if self.augment:
                x = crop_and_flip(x, gen)
            yield (x.float() - self.mean) / self.std, self.labels[idx]


def crop_and_flip(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random crop of each image zero-padded by ``H // 8``, and a random horizontal flip.

    Example:
        >>> crop_and_flip(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.Generator()).shape
        torch.Size([4, 3, 32, 32])
    """
    b, c, h, w = images.shape
    pad = max(1, h // 8)
    padded = F.pad(images, (pad,) * 4)
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = ox[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def load_image_folder(root: os.PathLike, split: str, size: int = 32,
                      per_class: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Decode ``root/<split>/<class>/*`` into uint8 tensors.

    Args:
        root: a folder holding ``train/`` and ``test/``, each with one folder per class.
        split: ``"train"`` or ``"test"``.
        size: images are resized to ``size x size`` where they differ.
        per_class: keep only the first this many images (by file name) of each class.

    Returns:
        ``(images [N, 3, size, size] uint8, labels [N] int64, class names)``.
    """
    from PIL import Image

    folder = Path(root) / split
    classes = class_names(root, split)
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files[:per_class]:
            with Image.open(path) as picture:
                picture = picture.convert("RGB")
                if picture.size != (size, size):
                    picture = picture.resize((size, size), Image.Resampling.BILINEAR)
                images.append(torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise FxPruneError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {folder}",
                           hint="put the images in one folder per class: DIR/train/<class>/*.png")
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), classes


def class_names(root: os.PathLike, split: str = "train") -> list:
    """The class folders of ``root/<split>``, sorted (their index is the label)."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise FxPruneError(f"{folder} is not a folder",
                           hint="pass a folder DIR that holds train/ and test/, each with one folder per class "
                                "(for CIFAR-10 as images: tar xzf cifar10-jpg.tar.gz; pass the folder holding train/)")
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def write_image_folder(root: os.PathLike, split: str, images: torch.Tensor, labels: torch.Tensor,
                       classes: Sequence[str]) -> Path:
    """Write uint8 images as ``root/<split>/<class>/<index>.png`` (the layout :func:`load_image_folder` reads).

    Example:
        >>> from fxprune.demo.shapes import make_shapes, CLASSES
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> _ = write_image_folder(root, "test", *make_shapes(20), CLASSES)
        >>> load_image_folder(root, "test")[0].shape
        torch.Size([20, 3, 32, 32])
    """
    from PIL import Image

    folder = Path(root) / split
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        target = folder / classes[label].replace(" ", "_")
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(target / f"{i:06d}.png")
    return folder
