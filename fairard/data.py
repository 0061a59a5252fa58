"""CIFAR-10/100, SVHN and Tiny-ImageNet loading and an on-device batch loader.

Loading (`load_split`) returns plain numpy arrays: x uint8 (N, H, W, 3) NHWC (32x32; 64x64 for
Tiny-ImageNet), y int64 (N,). It looks in this order and takes the first source that exists:

1. the dataset's own folder layout:

   - CIFAR: the torchvision folder ``<root>/cifar-10-batches-py`` (``cifar-100-python``), also one level
     down as ``<root>/<dataset>/cifar-10-batches-py``;
   - SVHN: torchvision's files ``<root>/svhn/{train,test}_32x32.mat`` (MATLAB ``X`` (32, 32, 3, N), ``y``
     (N, 1) with label 10 meaning digit 0, mapped to 0 here as torchvision does; read with scipy);
   - Tiny-ImageNet: the official archive unpacked as ``<root>/tiny-imagenet-200/`` (also
     ``<root>/tiny-imagenet/tiny-imagenet-200/``): ``wnids.txt``, ``train/<wnid>/images/*.JPEG``,
     ``val/images/*.JPEG`` with ``val/val_annotations.txt``. Class k is the k-th wnid in sorted order
     (torchvision ImageFolder's convention). The official ``test/`` has no labels, so split ``test``
     reads the labelled ``val/`` (10,000 images, 50 per class), as robustness papers do;

2. an npz pair ``<root>/<dataset>/{train,test}.npz`` with arrays ``x`` and ``y``;
3. a torchvision download into ``<root>`` (CIFAR) or ``<root>/svhn`` (SVHN); Tiny-ImageNet has none
   (skipped with ``download=False``).

If nothing is found it raises one `DataNotFoundError` listing every place it looked and the layout it expects.

Per-dataset training conventions (`AUGMENTATION`, and `fairard.methods` for learning rates): the
official Fair-ARD code has CIFAR-10 only (papers.md 1.6 item 7), so the SVHN and Tiny-ImageNet choices
are ours, named in `AUGMENTATION` and in the book (reproduce.md).

`DeviceLoader` follows airbench's loader: the whole split lives on the device as uint8, each batch is
an index slice of an on-device permutation, and crop + flip run batched on the device. Unlike airbench
it stays in [0, 1] (no normalisation, as in RobustBench; models normalise internally), works on CPU,
and draws all randomness from a `torch.Generator` seeded by (seed, epoch), so a resumed run sees
bit-identical batches without saving any RNG state.
"""
from __future__ import annotations

import math
import os
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CLASS_NAMES", "NUM_CLASSES", "IMAGE_SIZE", "AUGMENTATION", "DataNotFoundError", "data_root", "load_split",
    "source_files",
    "balanced_subset", "check_per_class", "split_validation", "DeviceLoader",
]

CLASS_NAMES: dict[str, list[str]] = {
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    # The 100 fine labels; torchvision (and the original `meta` file) order them alphabetically.
    "cifar100": [
        "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
        "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
        "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
        "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
        "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
        "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
        "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
        "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
        "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
        "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
    ],
    # SVHN's classes are the digits; torchvision maps the files' label 10 to digit 0.
    "svhn": [str(d) for d in range(10)],
    # Tiny-ImageNet's classes are WordNet ids read from the data (wnids.txt, sorted): class k is
    # the k-th one (`tiny_imagenet_wnids`); the names here are their indices.
    "tiny-imagenet": [f"class{k:03d}" for k in range(200)],
}
NUM_CLASSES: dict[str, int] = {name: len(names) for name, names in CLASS_NAMES.items()}
IMAGE_SIZE: dict[str, int] = {"cifar10": 32, "cifar100": 32, "svhn": 32, "tiny-imagenet": 64}

# Training augmentation per dataset: random-crop padding (pixels) and horizontal flips.
# CIFAR: the official codes' RandomCrop(32, padding=4) + flip. SVHN: the same crop, no flip (a mirrored
# digit is another glyph; SVHN robustness code such as Rice et al. 2020 trains without flips). Tiny-
# ImageNet: padding 8 at 64x64, i.e. the same 1/8 of the side as CIFAR's 4 at 32 (our choice; no
# official Fair-ARD value exists), with flips.
AUGMENTATION: dict[str, dict] = {
    "cifar10": {"padding": 4, "flip": True}, "cifar100": {"padding": 4, "flip": True},
    "svhn": {"padding": 4, "flip": False}, "tiny-imagenet": {"padding": 8, "flip": True},
}

SPLITS = ("train", "test")
TINY_IMAGENET_LAYOUT = ("tiny-imagenet-200/wnids.txt, tiny-imagenet-200/train/<wnid>/images/*.JPEG, "
                        "tiny-imagenet-200/val/images/*.JPEG and tiny-imagenet-200/val/val_annotations.txt "
                        "(the official archive http://cs231n.stanford.edu/tiny-imagenet-200.zip, unpacked)")

# torchvision-format layout per dataset: folder name, files per split, label key.
_TV_FORMAT = {
    "cifar10": ("cifar-10-batches-py",
                {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}, "labels"),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "fine_labels"),
}


class DataNotFoundError(FileNotFoundError):
    """No source for a dataset split was found (and downloading was off or failed)."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: `root` if given, else $FAIRARD_DATA, else ``data`` (relative to the working directory)."""
    if root is None:
        root = os.environ.get("FAIRARD_DATA") or "data"
    return Path(root).expanduser()


def _check_names(dataset: str, split: str) -> None:
    if dataset not in CLASS_NAMES:
        raise ValueError(f"unknown dataset {dataset!r}; valid names: {sorted(CLASS_NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")


def load_split(dataset: str = "cifar10", split: str = "train", root=None,
               download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Load one split as (x uint8 (N,H,W,3) NHWC, y int64 (N,)); see the module docstring for the sources."""
    _check_names(dataset, split)
    root = data_root(root)
    looked = []
    found = _read_native(dataset, split, root, looked)
    if found is not None:
        return _validate(*found)

    npz = root / dataset / f"{split}.npz"
    looked.append(f"{npz} (npz with arrays x, y)")
    if npz.is_file():
        try:
            with np.load(npz, allow_pickle=False) as f:
                arrays = {k: f[k] for k in ("x", "y") if k in f.files}
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:  # truncated, damaged, not an npz
            raise ValueError(f"{npz} cannot be read ({type(err).__name__}: {str(err)[:120]}); the file is damaged "
                             f"or truncated: re-create it, or remove it so that another source is used") from None
        missing = {"x", "y"} - set(arrays)
        if missing:
            raise ValueError(f"{npz} lacks array(s) {sorted(missing)}; it must hold x (uint8 NHWC) and y (int labels)")
        return _validate(arrays["x"], arrays["y"], dataset, str(npz))

    reason = "download=False" if dataset in _DOWNLOADS else "no download exists"
    if download and dataset in _DOWNLOADS:
        try:
            x, y = _download(dataset, split, root)
            return _validate(x, y, dataset, f"torchvision download into {root}")
        except (ImportError, OSError, RuntimeError) as e:  # offline: URLError is an OSError
            reason = f"the torchvision download into {root} failed: {type(e).__name__}: {e}"
    places = "\n".join(f"  - {p}" for p in looked)
    raise DataNotFoundError(
        f"{dataset} {split} split not found; looked in:\n{places}\nand {reason}.\n"
        f"Fix: put {_NATIVE_LAYOUT[dataset]} or the npz pair ({dataset}/train.npz, {dataset}/test.npz) "
        f"under a folder and point FAIRARD_DATA at it (or pass root=...)"
        + (", or allow download=True with internet access." if dataset in _DOWNLOADS else
           "; there is no torchvision download for it.")
    )


# What each dataset's own layout is called in the error message.
_NATIVE_LAYOUT = {
    "cifar10": "the torchvision folder (cifar-10-batches-py/)",
    "cifar100": "the torchvision folder (cifar-100-python/)",
    "svhn": "torchvision's SVHN files (svhn/train_32x32.mat, svhn/test_32x32.mat)",
    "tiny-imagenet": f"the official Tiny-ImageNet layout ({TINY_IMAGENET_LAYOUT})",
}


def _read_native(dataset: str, split: str, root: Path, looked: list):
    """(x, y, dataset, source) from the dataset's own layout under ``root``, or None (places tried go to ``looked``)."""
    if dataset in _TV_FORMAT:
        folder_name, files, label_key = _TV_FORMAT[dataset]
        for folder in (root / folder_name, root / dataset / folder_name):
            looked.append(f"{folder}/ (torchvision-format folder)")
            if folder.is_dir():
                return (*_read_tv_folder(folder, files[split], label_key), dataset, str(folder))
    elif dataset == "svhn":
        mat = root / "svhn" / f"{split}_32x32.mat"
        looked.append(f"{mat} (torchvision's SVHN file)")
        if mat.is_file():
            return (*_read_svhn_mat(mat), dataset, str(mat))
    elif dataset == "tiny-imagenet":
        for folder in (root / "tiny-imagenet-200", root / "tiny-imagenet" / "tiny-imagenet-200"):
            looked.append(f"{folder}/ (official Tiny-ImageNet layout)")
            if folder.is_dir():
                return (*_read_tiny_imagenet(folder, split), dataset, str(folder))
    return None


def source_files(dataset: str = "cifar10", split: str = "train", root=None) -> list[Path]:
    """The files ``load_split`` reads for a split (its first source that exists, in its order: the dataset's
    own layout, then the npz); empty when there is none yet (it would download).  The result store
    fingerprints them: a run is keyed by the data it actually read."""
    _check_names(dataset, split)
    root = data_root(root)
    if dataset in _TV_FORMAT:
        folder_name, files, _ = _TV_FORMAT[dataset]
        for folder in (root / folder_name, root / dataset / folder_name):
            if folder.is_dir():
                return [folder / name for name in files[split]]
    elif dataset == "svhn" and (root / "svhn" / f"{split}_32x32.mat").is_file():
        return [root / "svhn" / f"{split}_32x32.mat"]
    elif dataset == "tiny-imagenet":
        for folder in (root / "tiny-imagenet-200", root / "tiny-imagenet" / "tiny-imagenet-200"):
            if folder.is_dir():
                return sorted(f for f in folder.rglob("*") if f.is_file())
    npz = root / dataset / f"{split}.npz"
    return [npz] if npz.is_file() else []


def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's SVHN .mat: X (32, 32, 3, N) uint8, y (N, 1) in 1..10 where 10 is the digit 0."""
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise ImportError("reading SVHN's .mat files needs scipy: pip install scipy") from e
    mat = loadmat(path)
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path} lacks X or y; not torchvision's SVHN file (train_32x32.mat / test_32x32.mat)")
    x = np.ascontiguousarray(np.asarray(mat["X"]).transpose(3, 0, 1, 2))
    y = np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    return x, np.where(y == 10, 0, y)


def tiny_imagenet_wnids(folder: Path) -> list[str]:
    """The 200 WordNet ids of a Tiny-ImageNet folder, sorted: class k is the k-th."""
    path = Path(folder) / "wnids.txt"
    if not path.is_file():
        raise DataNotFoundError(f"{folder} exists but lacks wnids.txt; expected {TINY_IMAGENET_LAYOUT}")
    return sorted(line.strip() for line in path.read_text().splitlines() if line.strip())


def _read_images(paths) -> np.ndarray:
    from PIL import Image

    out = []
    for path in paths:
        with Image.open(path) as im:  # some Tiny-ImageNet images are greyscale: convert every one to RGB
            out.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return np.stack(out) if out else np.zeros((0, 64, 64, 3), np.uint8)


def _read_tiny_imagenet(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    wnids = tiny_imagenet_wnids(folder)
    label = {w: k for k, w in enumerate(wnids)}
    if split == "train":
        paths, ys = [], []
        for w in wnids:
            files = sorted((folder / "train" / w / "images").glob("*.JPEG"))
            if not files:
                raise DataNotFoundError(f"{folder}/train/{w}/images/ holds no *.JPEG; expected {TINY_IMAGENET_LAYOUT}")
            paths += files
            ys += [label[w]] * len(files)
    else:  # the labelled val/ serves as the test split (the official test/ has no labels)
        ann = folder / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise DataNotFoundError(f"{folder} lacks val/val_annotations.txt; expected {TINY_IMAGENET_LAYOUT}")
        paths, ys = [], []
        for line in sorted(ann.read_text().splitlines()):
            parts = line.split("\t")
            if len(parts) < 2:
                continue
            if parts[1] not in label:
                raise ValueError(f"{ann}: {parts[0]} has wnid {parts[1]!r}, which is not in wnids.txt")
            paths.append(folder / "val" / "images" / parts[0])
            ys.append(label[parts[1]])
    return _read_images(paths), np.asarray(ys, dtype=np.int64)


class _DatasetUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays: the CIFAR batch files need nothing else,
    so a tampered file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch file")
        return super().find_class(module, name)


def _read_tv_folder(folder: Path, names: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataNotFoundError(f"{folder} exists but lacks {name}; re-download it or delete the folder "
                                    f"so another source is used")
        with open(path, "rb") as fh:
            batch = _DatasetUnpickler(fh, encoding="bytes").load()
        # Original files were written by Python 2, so keys are bytes; accept str keys too.
        get = lambda k: batch[k.encode()] if k.encode() in batch else batch[k]  # noqa: E731
        try:
            data, labels = np.asarray(get("data")), np.asarray(get(label_key))
        except KeyError as e:
            raise ValueError(f"{path} lacks key {e}; not a torchvision-format CIFAR file") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{path}: 'data' has shape {data.shape}, expected (N, 3072)")
        # Rows are channel-planar (R plane, G plane, B plane of 32x32): CHW -> HWC.
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


_DOWNLOADS = ("cifar10", "cifar100", "svhn")


def _download(dataset: str, split: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    import torchvision

    if dataset == "svhn":  # torchvision writes svhn/<split>_32x32.mat, the layout read above
        torchvision.datasets.SVHN(str(root / "svhn"), split=split, download=True)
        return _read_svhn_mat(root / "svhn" / f"{split}_32x32.mat")
    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[dataset]
    ds = cls(str(root), train=(split == "train"), download=True)
    return np.asarray(ds.data), np.asarray(ds.targets)


def _validate(x, y, dataset: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    size = IMAGE_SIZE[dataset]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (size, size, 3):
        raise ValueError(f"{source}: x has dtype {x.dtype} and shape {x.shape}; expected uint8 (N, {size}, {size}, 3) "
                         f"NHWC pixels in 0..255 (convert with x.astype(np.uint8) / transpose to NHWC)")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{source}: y has dtype {y.dtype} and shape {y.shape}; expected 1-D integer labels")
    if len(x) != len(y):
        raise ValueError(f"{source}: {len(x)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES[dataset]):
        raise ValueError(f"{source}: labels span {y.min()}..{y.max()}, outside 0..{NUM_CLASSES[dataset] - 1} for {dataset}")
    return x, y.astype(np.int64)


def _rank_within_class(y: np.ndarray, n: int, seed: int | None, what: str):
    """Shuffle (seed) or keep order (seed=None), then give each sample its rank among its class."""
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be 1-D integer labels, got dtype {y.dtype} shape {y.shape}")
    counts = np.bincount(y, minlength=int(y.max()) + 1 if len(y) else 0)
    short = np.flatnonzero(counts < n)
    if len(short):
        raise ValueError(f"{what}: asked for {n} per class but class(es) {short.tolist()} have only "
                         f"{counts[short].tolist()} samples")
    order = np.arange(len(y)) if seed is None else np.random.default_rng(seed).permutation(len(y))
    order = order[np.argsort(y[order], kind="stable")]  # grouped by class, shuffled inside
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(y)) - starts[y[order]]
    return order, rank


def check_per_class(y, num_classes: int, need: int, *, where: str, what: str | None = None) -> np.ndarray:
    """Per-class counts of ``y``; ValueError if a class 0..num_classes-1 has fewer than ``need`` samples.
    ``what`` (e.g. ``n_per_class (--n-per-class)``) names the option that asked for ``need`` per class;
    without it the message is about classes missing from ``where`` (the data)."""
    counts = np.bincount(np.asarray(y), minlength=num_classes)[:num_classes]
    short = np.flatnonzero(counts < need)
    if not len(short):
        return counts
    listing = ", ".join(f"{k}: {counts[k]}" for k in short[:10]) + (f", ... (+{len(short) - 10})" if len(short) > 10 else "")
    if what is None:
        raise ValueError(f"{where} has no images of class(es) {short.tolist()[:20]}; all {num_classes} classes must be "
                         f"present (training would silently skip them): check or replace the data files")
    raise ValueError(f"{what} = {need} is more than {where} holds (images per class {{{listing}}}); "
                     f"use at most {int(counts.min())} or 'all'")


def balanced_subset(y, n_per_class: int, seed: int | None = 0) -> np.ndarray:
    """Sorted int64 indices of `n_per_class` samples of every class 0..max(y): drawn at random with `seed`
    (deterministic), or the first ones in order with ``seed=None``. Raises if a class has fewer."""
    order, rank = _rank_within_class(y, n_per_class, seed, "balanced_subset")
    return np.sort(order[rank < n_per_class]).astype(np.int64)


def split_validation(y, n_val_per_class: int, seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), sorted int64 and disjoint; val holds `n_val_per_class` of every class."""
    order, rank = _rank_within_class(y, n_val_per_class, seed, "split_validation")
    is_val = rank < n_val_per_class
    return np.sort(order[~is_val]).astype(np.int64), np.sort(order[is_val]).astype(np.int64)


def test_tensors(dataset: str = "cifar10", n_per_class: int | None = None, device="cpu", seed: int = 0,
                 root=None, what: str = "n_per_class") -> tuple[torch.Tensor, torch.Tensor]:
    """The test split (or a class-balanced ``n_per_class`` subset, >= 1; None or 'all': every image) as float
    [0, 1] NCHW images and int64 labels on ``device``: what every evaluation attacks. ``what`` names the option
    in the error when ``n_per_class`` is out of range or more than the split holds."""
    from .checks import check_int

    n_per_class = check_int(n_per_class, what, 1, all_word=True)
    x, y = load_split(dataset, "test", root)
    if n_per_class is not None:
        check_per_class(y, NUM_CLASSES[dataset], n_per_class, where=f"the {dataset} test split under {data_root(root)}",
                        what=what)
        idx = balanced_subset(y, n_per_class, seed=seed)
        x, y = x[idx], y[idx]
    xt = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float().div_(255).contiguous()
    return xt, torch.from_numpy(y).long().to(device)


def _epoch_seed(seed: int, epoch: int) -> int:
    # SeedSequence mixes (seed, epoch) so nearby pairs give unrelated streams (seed*K+epoch could collide).
    words = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def _random_crop(x: torch.Tensor, padding: int, pad_mode: str, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random HxW crop of the padded batch, as torchvision's RandomCrop(H, padding) on each image.
    Pads once, then two gathers pick each sample's rows and columns: no loop over samples or offsets."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode="constant" if pad_mode == "zeros" else "reflect")
    dy, dx = torch.randint(0, 2 * padding + 1, (2, b, 1), generator=gen, device=x.device)
    rows = dy + torch.arange(h, device=x.device)   # (B, H) source rows in the padded image
    cols = dx + torch.arange(w, device=x.device)   # (B, W)
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def _random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class DeviceLoader:
    """Batches of (x float32 (B,3,H,W) in [0,1], y int64 (B,), idx int64 (B,)) from a split resident on `device`.

    `x` is uint8 NHWC (numpy or tensor), converted once to a uint8 NCHW tensor on the device. `idx` is the
    row of each sample in the given `x`, for per-sample state. Training mode shuffles, drops the last
    partial batch and augments (random crop with `padding`, zero or reflect padding, and, with `flip`, a
    horizontal flip; `AUGMENTATION` holds each dataset's padding and flip).
    Eval mode (train=False) yields the data unchanged and in order, keeping the last partial batch.

    Randomness comes from a fresh `torch.Generator(device)` seeded by (seed, epoch) at each pass.
    Each pass uses the current epoch and then advances it by one, so a plain loop gets a new
    permutation every pass; `set_epoch(e)` pins the next pass to epoch e, which makes resume exact.
    """

    def __init__(self, x, y, *, batch_size: int = 128, train: bool = True, device="cpu", seed: int = 0,
                 drop_last: bool | None = None, augment: bool | None = None, pad_mode: str = "zeros",
                 channels_last: bool = False, padding: int = 4, flip: bool = True, num_classes: int | None = None):
        if pad_mode not in ("zeros", "reflect"):
            raise ValueError(f"pad_mode must be 'zeros' or 'reflect', got {pad_mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        x = torch.as_tensor(x)
        y = torch.as_tensor(y)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ValueError(f"x must be uint8 NHWC (N, H, W, C) with C in (1, 3), got {x.dtype} {tuple(x.shape)}")
        if y.ndim != 1 or len(y) != len(x) or y.is_floating_point():
            raise ValueError(f"y must be 1-D integer labels with one per image, got {y.dtype} {tuple(y.shape)} "
                             f"for {len(x)} images")
        self.device = torch.device(device)
        # One host->device copy and layout change; everything per batch stays on the device.
        self._images = x.to(self.device).permute(0, 3, 1, 2).contiguous()
        self._labels = y.to(self.device, torch.int64)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.drop_last = train if drop_last is None else drop_last
        self.augment = train if augment is None else augment
        self.pad_mode, self.padding, self.flip, self.channels_last = pad_mode, padding, flip, channels_last
        self.num_samples = len(x)
        self.num_classes = int(self._labels.max()) + 1 if num_classes is None else num_classes
        self.class_counts = torch.bincount(self._labels, minlength=self.num_classes)
        self.epoch = 0

    # Read-only: swapping the data under a loader would silently desynchronise idx-keyed state.
    @property
    def images(self) -> torch.Tensor:
        return self._images

    @property
    def labels(self) -> torch.Tensor:
        return self._labels

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._batches(epoch)

    def _batches(self, epoch: int):
        gen = torch.Generator(device=self.device)
        gen.manual_seed(_epoch_seed(self.seed, epoch))
        if self.train:
            order = torch.randperm(self.num_samples, generator=gen, device=self.device)
        else:
            order = torch.arange(self.num_samples, device=self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self._images[idx].float().div_(255)
            if self.augment:
                x = _random_crop(x, self.padding, self.pad_mode, gen)
                x = _random_flip(x, gen) if self.flip else x
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self._labels[idx], idx
