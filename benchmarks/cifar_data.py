"""CIFAR-10 as uint8 tensors in memory, with batched augmentation in torch.

Reads, never downloads, one of two layouts:

- an image folder ``<root>/{train,test}/<class>/*.jpg`` (or ``.png``), classes
  sorted by name (which is CIFAR-10's own label order);
- a torchvision root holding ``cifar-10-batches-py`` (or that folder itself).

Decoding happens once; the result (``images`` uint8 ``(N, 3, 32, 32)``,
``labels`` int64 ``(N,)``) is cached as a ``.pt`` in
``$XDG_CACHE_HOME/fxprune`` (default ``~/.cache/fxprune``), keyed by the
resolved source path and split. Batching, augmentation (random crop of the image
padded with 4 black pixels, as torchvision's ``RandomCrop(32, padding=4)`` does, and a
horizontal flip) and normalisation are fxprune's :class:`~fxprune.training.data.ImageBatches`.

Example::

    root = extract_archive("../shared/data/cifar10-jpg.tar.gz", "/tmp/fxprune-data")
    train, test = cifar10_loaders(root, batch_size=128, seed=0)
    for x, y in train:  # x float32 (128, 3, 32, 32), normalised; y int64
        ...
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from fxprune.training.data import ImageBatches, load_image_folder

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fxprune``, or ``~/.cache/fxprune``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fxprune"


def extract_archive(archive: os.PathLike, scratch_dir: os.PathLike) -> Path:
    """Extract a CIFAR-10 image-folder archive into ``scratch_dir`` unless already there.

    Args:
        archive: a ``.tar.gz`` holding ``cifar10/{train,test}/<class>/*.jpg``.
        scratch_dir: a folder outside the repository, e.g. ``/tmp/fxprune-data``.

    Returns:
        The folder holding ``train/`` and ``test/`` (``scratch_dir/cifar10``).
    """
    scratch_dir = Path(scratch_dir)
    done = scratch_dir / ".extracted"
    if not done.exists():
        scratch_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(scratch_dir, filter="data")
            else:  # Python < 3.10.12 has no extraction filters
                tar.extractall(scratch_dir)
        done.write_text(str(Path(archive).resolve()))
    root = find_image_root(scratch_dir)
    if root is None:
        raise FileNotFoundError(f"no train/ and test/ folders under {scratch_dir} after extracting {archive}")
    return root


def find_image_root(folder: os.PathLike) -> Optional[Path]:
    """``folder`` or its first sub-folder that holds ``train/`` and ``test/``, else ``None``."""
    folder = Path(folder)
    for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    return None


def load_cifar10(root: os.PathLike, split: str,
                 cache_dir: Optional[os.PathLike] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one split, decoded once and then read from the cache.

    Args:
        root: an image-folder root or a torchvision CIFAR-10 root (see module docstring).
        split: ``"train"`` or ``"test"``.
        cache_dir: where the decoded ``.pt`` goes; ``None`` for :func:`default_cache_dir`.

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    source = Path(root).resolve()
    key = hashlib.sha1(f"{source}|{split}".encode()).hexdigest()[:16]
    cache = Path(cache_dir or default_cache_dir()) / f"cifar10-{split}-{key}.pt"
    if cache.exists():
        saved = torch.load(cache, weights_only=True)
        return saved["images"], saved["labels"]
    batches = _torchvision_batches(source)
    if batches:
        images, labels = _decode_batches(batches, split)
    else:
        images, labels, _ = load_image_folder(source, split, size=32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save({"images": images, "labels": labels, "source": str(source), "split": split}, tmp)
    os.replace(tmp, cache)
    return images, labels


def _torchvision_batches(source: Path) -> Optional[Path]:
    for candidate in (source / "cifar-10-batches-py", source):
        if (candidate / "data_batch_1").exists():
            return candidate
    return None


def _decode_batches(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    data, labels = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry["labels"])
    return torch.from_numpy(np.concatenate(data)), torch.tensor(labels, dtype=torch.int64)


def subset_per_class(images: torch.Tensor, labels: torch.Tensor, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` samples of every class, in data order.

    Example:
        >>> x, y = subset_per_class(torch.zeros(6, 3, 32, 32), torch.tensor([0, 1, 0, 1, 0, 1]), 2)
        >>> y.tolist()
        [0, 1, 0, 1]
    """
    keep = torch.zeros_like(labels, dtype=torch.bool)
    for c in labels.unique():
        keep[(labels == c).nonzero().flatten()[:per_class]] = True
    return images[keep], labels[keep]


def cifar10_loaders(root: os.PathLike, batch_size: int = 128, *, test_batch_size: int = 500,
                    subset: Optional[int] = None, seed: int = 0, cache_dir: Optional[os.PathLike] = None,
                    scratch_dir: os.PathLike = "/tmp/fxprune-data") -> tuple[ImageBatches, ImageBatches]:
    """Train (shuffled, augmented) and test (in order, plain) batch iterators.

    Args:
        root: a CIFAR-10 image-folder or torchvision root, or a ``.tar.gz`` of an
            image folder (extracted once into ``scratch_dir``).
        batch_size: training batch size.
        test_batch_size: evaluation batch size.
        subset: keep only the first ``subset`` images per class of each split.
        seed: shuffling and augmentation seed.
        cache_dir: decoded-tensor cache (see :func:`load_cifar10`).
        scratch_dir: where a ``.tar.gz`` is extracted (keep it outside the repository).

    Returns:
        ``(train, test)``.
    """
    if str(root).endswith((".tar.gz", ".tgz")):
        root = extract_archive(root, scratch_dir)
    splits = []
    for split in ("train", "test"):
        images, labels = load_cifar10(root, split, cache_dir)
        if subset is not None:
            images, labels = subset_per_class(images, labels, subset)
        splits.append((images, labels))
    train = ImageBatches(*splits[0], batch_size, shuffle=True, augment=True, seed=seed, mean=MEAN, std=STD)
    test = ImageBatches(*splits[1], test_batch_size, shuffle=False, augment=False, seed=seed, mean=MEAN, std=STD)
    return train, test


@dataclass
class Splits:
    """Training images split into train and a held-out validation set, and the test set.

    ``calibration`` yields plain (not augmented) batches of training images, in a fixed
    shuffled order: what BatchNorm recalibration and reconstruction see (never labels).
    """

    train: ImageBatches
    val: ImageBatches
    test: ImageBatches
    calibration: ImageBatches
    val_indices: torch.Tensor


def cifar10_splits(root: os.PathLike, batch_size: int = 128, *, validation: int = 5000, split_seed: int = 0,
                   test_batch_size: int = 500, subset: Optional[int] = None, seed: int = 0,
                   cache_dir: Optional[os.PathLike] = None, scratch_dir: os.PathLike = "/tmp/fxprune-data") -> Splits:
    """Like :func:`cifar10_loaders`, with ``validation`` training images held out (a random
    permutation drawn from ``split_seed``, the same for every run seed) for choosing hyper-parameters.

    Example::

        data = cifar10_splits(root, validation=5000)
        len(data.train.labels), len(data.val.labels)   # (45000, 5000)
    """
    train, test = cifar10_loaders(root, batch_size, test_batch_size=test_batch_size, subset=subset, seed=seed,
                                  cache_dir=cache_dir, scratch_dir=scratch_dir)
    images, labels = train.images, train.labels
    if not 0 < validation < len(labels):
        raise ValueError(f"validation must be between 1 and {len(labels) - 1} images, got {validation}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    held, kept = order[:validation].sort().values, order[validation:].sort().values
    plain = {"augment": False, "mean": MEAN, "std": STD}
    return Splits(
        train=ImageBatches(images[kept], labels[kept], batch_size, shuffle=True, augment=True, seed=seed,
                           mean=MEAN, std=STD),
        val=ImageBatches(images[held], labels[held], test_batch_size, shuffle=False, **plain),
        test=test,
        calibration=ImageBatches(images[kept], labels[kept], batch_size, shuffle=True, seed=split_seed, **plain),
        val_indices=held)
