"""Tests for fairard.data: the three loading sources, their errors, subsets and the on-device loader."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fairard.data import (CLASS_NAMES, NUM_CLASSES, DataNotFoundError, DeviceLoader, balanced_subset,
                          data_root, load_split, split_validation)

REPO = Path(__file__).resolve().parents[1]


def _shared_root():
    """$FAIRARD_DATA if it holds CIFAR-10, else ../shared/data next to the repo (None if neither does)."""
    candidates = [Path(os.environ["FAIRARD_DATA"])] if os.environ.get("FAIRARD_DATA") else []
    candidates.append(REPO.parent / "shared" / "data")
    for root in candidates:
        if (root / "cifar10" / "train.npz").is_file() or (root / "cifar-10-batches-py").is_dir() \
                or (root / "cifar10" / "cifar-10-batches-py").is_dir():
            return root
    return None


SHARED = _shared_root()
needs_cifar10 = pytest.mark.skipif(SHARED is None, reason="no CIFAR-10 copy: set FAIRARD_DATA or provide ../shared/data")


# ---------------------------------------------------------------- names and root

def test_class_names():
    assert NUM_CLASSES == {"cifar10": 10, "cifar100": 100, "svhn": 10, "tiny-imagenet": 200}
    assert CLASS_NAMES["cifar10"][0] == "airplane" and CLASS_NAMES["cifar10"][-1] == "truck"
    c100 = CLASS_NAMES["cifar100"]
    assert c100 == sorted(set(c100))  # torchvision's order is alphabetical, no duplicates
    assert c100[:4] == ["apple", "aquarium_fish", "baby", "bear"] and c100[-1] == "worm"


def test_data_root(monkeypatch, tmp_path):
    monkeypatch.delenv("FAIRARD_DATA", raising=False)
    assert data_root() == Path("data")
    monkeypatch.setenv("FAIRARD_DATA", str(tmp_path))
    assert data_root() == tmp_path
    assert data_root("elsewhere") == Path("elsewhere")


def test_unknown_names_list_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="cifar10"):
        load_split("mnist", root=tmp_path, download=False)
    with pytest.raises(ValueError, match="train"):
        load_split("cifar10", "val", root=tmp_path, download=False)


# ---------------------------------------------------------------- the shared npz copy

@needs_cifar10
@pytest.mark.parametrize("split,n_per_class", [("train", 5000), ("test", 1000)])
def test_shared_cifar10(split, n_per_class):
    x, y = load_split("cifar10", split, root=SHARED, download=False)
    assert x.dtype == np.uint8 and x.shape == (10 * n_per_class, 32, 32, 3)
    assert y.dtype == np.int64 and y.shape == (10 * n_per_class,)
    assert np.bincount(y).tolist() == [n_per_class] * 10


# ---------------------------------------------------------------- torchvision-format folders

def _write_batch(path, data, labels, label_key):
    # Same layout as the released files: bytes keys, (N, 3072) uint8 rows, labels as a list.
    with open(path, "wb") as fh:
        pickle.dump({b"batch_label": b"synthetic", label_key: list(map(int, labels)), b"data": data}, fh, protocol=2)


def _fake_rows(rng, n, num_classes):
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, num_classes, n)


def _chw_to_hwc(rows):
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("nested", [False, True])
def test_torchvision_cifar10_folder(tmp_path, nested):
    rng = np.random.default_rng(0)
    folder = (tmp_path / "cifar10" if nested else tmp_path) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data, labels = _fake_rows(rng, 3, 10)
        written.append((data, labels))
        _write_batch(folder / name, data, labels, b"labels")
    # A known pixel: channel 2 (blue) at row 5, column 7 of the first training image.
    written[0][0][0, 2 * 1024 + 5 * 32 + 7] = 201
    _write_batch(folder / "data_batch_1", *written[0], b"labels")

    x, y = load_split("cifar10", "train", root=tmp_path, download=False)
    assert x.dtype == np.uint8 and x.shape == (15, 32, 32, 3) and y.dtype == np.int64
    assert x[0, 5, 7, 2] == 201
    np.testing.assert_array_equal(x, _chw_to_hwc(np.concatenate([d for d, _ in written[:5]])))
    np.testing.assert_array_equal(y, np.concatenate([lab for _, lab in written[:5]]))

    xt, yt = load_split("cifar10", "test", root=tmp_path, download=False)
    np.testing.assert_array_equal(xt, _chw_to_hwc(written[5][0]))
    np.testing.assert_array_equal(yt, written[5][1])


def test_torchvision_cifar100_folder(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in [("train", 6), ("test", 4)]:
        data, labels = _fake_rows(rng, n, 100)
        labels[0] = 99
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist()},
                        fh, protocol=2)
        x, y = load_split("cifar100", name, root=tmp_path, download=False)
        assert x.shape == (n, 32, 32, 3) and y[0] == 99
        np.testing.assert_array_equal(x, _chw_to_hwc(data))
        np.testing.assert_array_equal(y, labels)  # fine labels, not coarse


def test_incomplete_folder_names_missing_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    _write_batch(folder / "data_batch_1", *_fake_rows(np.random.default_rng(0), 2, 10), b"labels")
    with pytest.raises(DataNotFoundError, match="data_batch_2"):
        load_split("cifar10", "train", root=tmp_path, download=False)


def test_pickle_with_foreign_globals_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": Path("x"), b"labels": [0]}, fh)  # any class outside numpy must be rejected
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_split("cifar10", "test", root=tmp_path, download=False)


# ---------------------------------------------------------------- missing data and bad npz

def test_nothing_found_lists_every_place(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_split("cifar10", "test", root=tmp_path, download=False)
    assert isinstance(info.value, FileNotFoundError)
    msg = str(info.value)
    for place in [tmp_path / "cifar-10-batches-py", tmp_path / "cifar10" / "cifar-10-batches-py",
                  tmp_path / "cifar10" / "test.npz"]:
        assert str(place) in msg
    assert "FAIRARD_DATA" in msg and "root=" in msg and "download" in msg


def _write_npz(root, split, x, y):
    (root / "cifar10").mkdir(exist_ok=True)
    np.savez(root / "cifar10" / f"{split}.npz", x=x, y=y)


def test_npz_pair(tmp_path):
    x = np.random.default_rng(2).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    _write_npz(tmp_path, "test", x, np.arange(7, dtype=np.int32))
    xl, yl = load_split("cifar10", "test", root=tmp_path, download=False)
    np.testing.assert_array_equal(xl, x)
    assert yl.dtype == np.int64 and yl.tolist() == list(range(7))


@pytest.mark.parametrize("x,y,match", [
    (np.zeros((4, 32, 32, 3), np.float32), np.zeros(4, np.int64), "uint8"),
    (np.zeros((4, 3, 32, 32), np.uint8), np.zeros(4, np.int64), "NHWC"),
    (np.zeros((4, 32, 32, 3), np.uint8), np.zeros(3, np.int64), "4 images but 3 labels"),
    (np.zeros((4, 32, 32, 3), np.uint8), np.full(4, 10), "outside 0..9"),
])
def test_bad_npz_is_a_clear_error(tmp_path, x, y, match):
    _write_npz(tmp_path, "train", x, y)
    with pytest.raises(ValueError, match=match) as info:
        load_split("cifar10", "train", root=tmp_path, download=False)
    assert "train.npz" in str(info.value)


# ---------------------------------------------------------------- subsets

def _labels(n_per_class=20, classes=10, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), n_per_class))


def test_balanced_subset():
    y = _labels()
    idx = balanced_subset(y, 5, seed=3)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    assert np.bincount(y[idx]).tolist() == [5] * 10
    np.testing.assert_array_equal(idx, balanced_subset(y, 5, seed=3))
    assert not np.array_equal(idx, balanced_subset(y, 5, seed=4))
    first = balanced_subset(y, 2, seed=None)  # the first two of each class, in order
    expected = np.sort(np.concatenate([np.flatnonzero(y == c)[:2] for c in range(10)]))
    np.testing.assert_array_equal(first, expected)
    with pytest.raises(ValueError, match="only"):
        balanced_subset(y, 21)


def test_split_validation():
    y = _labels()
    tr, va = split_validation(y, 4, seed=1)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(y)
    assert np.bincount(y[va]).tolist() == [4] * 10 and np.bincount(y[tr]).tolist() == [16] * 10
    for a, b in zip((tr, va), split_validation(y, 4, seed=1)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- DeviceLoader

N = 70


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(5)
    return rng.integers(1, 256, (N, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, N)


def _as_float_nchw(x):
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255


def _run(loader, epoch=0):
    loader.set_epoch(epoch)
    return list(loader)


def test_eval_loader_returns_data_unchanged_in_order(toy):
    x, y = toy
    loader = DeviceLoader(x, y, batch_size=32, train=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and [len(b[0]) for b in batches] == [32, 32, 6]
    xs, ys, idx = (torch.cat(t) for t in zip(*batches))
    assert torch.equal(idx, torch.arange(N)) and torch.equal(ys, torch.from_numpy(y))
    assert xs.dtype == torch.float32 and torch.equal(xs, _as_float_nchw(x))
    assert loader.num_samples == N and loader.num_classes == 10
    assert loader.class_counts.tolist() == np.bincount(y, minlength=10).tolist()


def test_train_loader_permutes_and_keeps_labels(toy):
    x, y = toy
    loader = DeviceLoader(x, y, batch_size=16, seed=0)
    batches = _run(loader)
    assert len(loader) == len(batches) == N // 16  # drop_last in training
    idx = torch.cat([b[2] for b in batches])
    assert len(set(idx.tolist())) == len(idx)  # a permutation slice: no repeats
    assert not torch.equal(idx, torch.arange(len(idx)))
    for xb, yb, ib in batches:
        assert xb.shape == (16, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert torch.equal(yb, torch.from_numpy(y)[ib])  # idx maps back to the rows
        assert xb.min() >= 0 and xb.max() <= 1


def test_train_loader_is_seeded_per_epoch(toy):
    x, y = toy
    a, b, c = (DeviceLoader(x, y, batch_size=16, seed=s) for s in (0, 0, 1))
    same = lambda p, q: all(torch.equal(u, v) for bp, bq in zip(p, q) for u, v in zip(bp, bq))  # noqa: E731
    assert same(_run(a, 3), _run(b, 3))        # same (seed, epoch): identical, augmentation included
    assert not same(_run(a, 3), _run(c, 3))    # other seed
    assert not torch.equal(_run(a, 3)[0][2], _run(a, 4)[0][2])  # other epoch: other permutation
    # A plain loop advances the epoch, and set_epoch pins it again (resume).
    a.set_epoch(7)
    first, second = list(a), list(a)
    assert not same(first, second) and same(second, _run(b, 8))


def test_crop_and_flip_match_windows_of_the_padded_image(toy):
    x, y = toy
    for pad_mode, np_mode in [("zeros", "constant"), ("reflect", "reflect")]:
        loader = DeviceLoader(x, y, batch_size=N, seed=2, drop_last=False, pad_mode=pad_mode)
        xb, _, idx = _run(loader)[0]
        padded = np.pad(_as_float_nchw(x).numpy(), ((0, 0), (0, 0), (4, 4), (4, 4)), mode=np_mode)
        shifts, flips = [], []
        for out, i in zip(xb.numpy(), idx.tolist()):
            windows = {(dy, dx): padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)}
            matches = [(*shift, f) for shift, w in windows.items() for f in (False, True)
                       if np.array_equal(out, w[..., ::-1] if f else w)]
            assert len(matches) == 1, "each output must be exactly one (flipped) window of its padded image"
            shifts.append(matches[0][:2])
            flips.append(matches[0][2])
        assert len(set(shifts)) > 10  # content really moves, by varied offsets
        assert 0.2 < np.mean(flips) < 0.8  # some flipped, some not


def test_no_augment_and_channels_last(toy):
    x, y = toy
    loader = DeviceLoader(x, y, batch_size=10, augment=False, channels_last=True)
    for xb, _, ib in _run(loader):
        assert xb.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(xb, _as_float_nchw(x)[ib])  # shuffled but unaugmented


def test_loader_rejects_bad_input(toy):
    x, y = toy
    with pytest.raises(ValueError, match="uint8 NHWC"):
        DeviceLoader(x.astype(np.float32), y)
    with pytest.raises(ValueError, match="one per image"):
        DeviceLoader(x, y[:-1])
    with pytest.raises(ValueError, match="pad_mode"):
        DeviceLoader(x, y, pad_mode="edge")


# ---------------------------------------------------------------- SVHN and Tiny-ImageNet in their own layouts

def test_dataset_names_and_sizes():
    from fairard.data import AUGMENTATION, IMAGE_SIZE
    assert NUM_CLASSES["svhn"] == 10 and NUM_CLASSES["tiny-imagenet"] == 200
    assert IMAGE_SIZE["tiny-imagenet"] == 64 and IMAGE_SIZE["svhn"] == 32
    assert set(AUGMENTATION) == set(NUM_CLASSES) and AUGMENTATION["svhn"]["flip"] is False


def test_svhn_mat_files_map_label_10_to_digit_0(tmp_path):
    savemat = pytest.importorskip("scipy.io").savemat
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 10)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)   # torchvision's file: HWC then N
        y = np.arange(n) % 10 + 1                                        # labels 1..10; 10 is the digit 0
        (tmp_path / "svhn").mkdir(exist_ok=True)
        savemat(tmp_path / "svhn" / f"{split}_32x32.mat", {"X": x, "y": y.reshape(-1, 1).astype(np.uint8)})
        xs, ys = load_split("svhn", split, root=tmp_path, download=False)
        assert xs.shape == (n, 32, 32, 3) and xs.dtype == np.uint8 and ys.dtype == np.int64
        np.testing.assert_array_equal(xs[3], x[..., 3])
        np.testing.assert_array_equal(ys, np.where(y == 10, 0, y))
        assert ys.min() == 0 and ys.max() == 9 and (ys[y == 10] == 0).all()


def _write_tiny_imagenet(root: Path, wnids, n_train=2, val=()):
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")   # file order need not be sorted
    for k, w in enumerate(wnids):
        (folder / "train" / w / "images").mkdir(parents=True)
        for i in range(n_train):
            img = np.full((64, 64, 3), (k * 7 + i) % 256, np.uint8)
            Image.fromarray(img).save(folder / "train" / w / "images" / f"{w}_{i}.JPEG", quality=100)
    lines = []
    for i, w in enumerate(val):
        name = f"val_{i}.JPEG"
        mode = "L" if i == 0 else "RGB"  # a greyscale image, as the real archive has some
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).convert(mode).save(folder / "val" / "images" / name)
        lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_tiny_imagenet_layout(tmp_path):
    wnids = [f"n{(k * 7919) % 1009:08d}" for k in range(200)]   # 200 distinct ids, not in sorted order
    assert wnids != sorted(wnids)
    val = [wnids[5], sorted(wnids)[0], sorted(wnids)[199]]
    _write_tiny_imagenet(tmp_path, wnids, n_train=1, val=val)
    x, y = load_split("tiny-imagenet", "train", root=tmp_path, download=False)
    assert x.shape == (200, 64, 64, 3) and x.dtype == np.uint8
    assert sorted(y.tolist()) == list(range(200))          # class count: every sorted-wnid index once
    # class k is the k-th wnid in sorted order: the image written for wnid w has value (index in file * 7) % 256
    for label, image in zip(y[:20], x[:20]):
        k_file = wnids.index(sorted(wnids)[label])
        assert abs(int(image.mean()) - (k_file * 7) % 256) <= 2
    xt, yt = load_split("tiny-imagenet", "test", root=tmp_path, download=False)   # reads the labelled val/
    assert xt.shape == (3, 64, 64, 3)
    assert yt.tolist() == [sorted(wnids).index(val[0]), 0, 199]


def test_missing_datasets_name_the_expected_layout(tmp_path):
    with pytest.raises(DataNotFoundError, match="tiny-imagenet-200/wnids.txt.*val_annotations.txt"):
        load_split("tiny-imagenet", "train", root=tmp_path, download=True)   # no download exists: still an error
    with pytest.raises(DataNotFoundError, match="svhn/train_32x32.mat"):
        load_split("svhn", "train", root=tmp_path, download=False)
    (tmp_path / "tiny-imagenet-200").mkdir()
    with pytest.raises(DataNotFoundError, match="wnids.txt"):
        load_split("tiny-imagenet", "test", root=tmp_path, download=False)


def test_loader_crops_64x64_and_can_skip_flips():
    x = torch.randint(0, 256, (6, 64, 64, 3), dtype=torch.uint8)
    y = torch.arange(6)
    batch, _, _ = next(iter(DeviceLoader(x, y, batch_size=6, padding=8, seed=1)))
    assert batch.shape == (6, 3, 64, 64)
    plain = DeviceLoader(x, y, batch_size=6, padding=0, flip=False, seed=1)
    xb, _, idx = next(iter(plain))   # no padding, no flip: the images unchanged (in shuffled order)
    torch.testing.assert_close(xb, x[idx].permute(0, 3, 1, 2).float() / 255)
