"""Tests for gradleak.data: built-in datasets, splits, CIFAR pickles, image folders, sampling, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gradleak.data import DATASETS, ImageSet, list_datasets, load_dataset, sample_batch
from gradleak.data.digits import split_indices
from gradleak.data.photos import PHOTOS, PRIVATE_PHOTOS, PUBLIC_PHOTOS, crop_boxes
from gradleak.errors import UserError


def _check_images(data: ImageSet, n_channels: int, resolution: int) -> None:
    assert data.images.dtype == torch.float32
    assert data.labels.dtype == torch.int64
    assert data.images.shape[1:] == (n_channels, resolution, resolution)
    assert len(data) == data.images.shape[0] == data.labels.shape[0]
    assert data.images.min() >= 0.0 and data.images.max() <= 1.0
    assert data.labels.min() >= 0 and data.labels.max() < data.num_classes
    assert len(data.class_names) == data.num_classes


# ---------------------------------------------------------------- registry


def test_registry_lists_all_datasets(tmp_path, cli):
    """Every listed name loads through load_dataset as that dataset (data on disk faked where needed), the
    documented five are there, and `gradleak list` shows exactly the registry's datasets."""
    assert {"digits", "photos", "cifar10", "cifar100", "folder"} <= set(list_datasets())
    _write_cifar(tmp_path / "c10" / "cifar-10-batches-py", "cifar10")
    _write_cifar(tmp_path / "c100" / "cifar-100-python", "cifar100")
    for cls in ("a", "b"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (12, 10), (40 * i, 200, 9)).save(tmp_path / "img" / cls / f"{i}.png")
    for side in ("train", "test"):  # a dataset as 'gradleak data fetch' lays it out
        (tmp_path / "fetched" / "images" / "8" / side / "a").mkdir(parents=True)
        Image.new("RGB", (8, 8), (9, 90, 9)).save(tmp_path / "fetched" / "images" / "8" / side / "a" / "p__c0.png")
    roots = {"cifar10": tmp_path / "c10", "cifar100": tmp_path / "c100", "folder": tmp_path / "img",
             "fetched": tmp_path / "fetched"}
    for name in list_datasets():
        for split in ("private", "public", "all"):  # the first split this dataset has
            try:
                data = load_dataset(name, split=split, resolution=8, channels=3,
                                    root=str(roots[name]) if name in roots else None)
                break
            except UserError as err:
                if "data.split" not in str(err):
                    raise
        else:
            pytest.fail(f"{name}: none of the splits private, public, all")
        assert data.name == name and len(data) > 0 and data.images.shape[1:] == (3, 8, 8), name
    r = cli("list")
    assert r.returncode == 0
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("datasets: "))
    assert line.removeprefix("datasets: ").split(", ") == list_datasets()


# ---------------------------------------------------------------- digits


@pytest.mark.parametrize("channels", [1, 3])
def test_digits_shapes_and_ranges(channels):
    data = load_dataset("digits", split="private", resolution=32, channels=channels)
    _check_images(data, channels, 32)
    assert data.num_classes == 10 and data.name == "digits"
    assert data.images.max() > 0.9  # strokes reach full intensity after scaling 0..16 -> 0..1
    if channels == 3:  # grey repeated
        assert torch.equal(data.images[:, 0], data.images[:, 2])


def test_digits_upsampling_matches_native_pixels():
    from sklearn.datasets import load_digits

    native = load_dataset("digits", split="all", resolution=8, channels=1)
    expected = torch.from_numpy(load_digits().images).float() / 16
    assert torch.allclose(native.images[:, 0], expected)
    big = load_dataset("digits", split="all", resolution=32, channels=1)
    # downsampling the (smooth) 32 px version back recovers the 8 px digit
    back = torch.nn.functional.avg_pool2d(big.images, 4).flatten()
    corr = torch.corrcoef(torch.stack([back, native.images.flatten()]))[0, 1]
    assert corr > 0.95


def test_digits_split_disjoint_fixed_and_covering():
    idx = split_indices()
    pub, priv = set(idx["public"].tolist()), set(idx["private"].tolist())
    assert not pub & priv
    assert len(pub | priv) == 1797
    assert abs(len(pub) - len(priv)) <= 10
    public = load_dataset("digits", split="public")
    private = load_dataset("digits", split="private")
    assert len(public) == len(pub) and len(private) == len(priv)
    assert set(public.labels.tolist()) == set(private.labels.tolist()) == set(range(10))
    # fixed: independent of the seed argument and of calls
    again = load_dataset("digits", split="private", seed=123)
    assert torch.equal(again.images, private.images) and torch.equal(again.labels, private.labels)


def test_digits_returns_copies():
    a = load_dataset("digits", split="private")
    a.images.zero_()
    b = load_dataset("digits", split="private")
    assert b.images.max() > 0.5


# ---------------------------------------------------------------- photos


@pytest.mark.parametrize("resolution", [32, 64])
def test_photos_shapes_and_ranges(resolution):
    data = load_dataset("photos", split="all", resolution=resolution, channels=3)
    _check_images(data, 3, resolution)
    assert data.num_classes == len(PHOTOS) == 12
    assert data.class_names == list(PHOTOS)
    assert 200 <= len(data) <= 600
    assert set(data.labels.tolist()) == set(range(len(PHOTOS)))
    assert data.images.std() > 0.1  # real content, not blank


def test_photos_luminance():
    rgb = load_dataset("photos", split="private", resolution=32, channels=3)
    grey = load_dataset("photos", split="private", resolution=32, channels=1)
    _check_images(grey, 1, 32)
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose(grey.images, (rgb.images * w).sum(1, keepdim=True), atol=1e-5)


def test_photos_split_by_source_photo():
    public = load_dataset("photos", split="public")
    private = load_dataset("photos", split="private")
    everything = load_dataset("photos", split="all")
    pub_photos = {public.class_names[i] for i in public.labels.tolist()}
    priv_photos = {private.class_names[i] for i in private.labels.tolist()}
    assert pub_photos == set(PUBLIC_PHOTOS) and priv_photos == set(PRIVATE_PHOTOS)
    assert not pub_photos & priv_photos
    assert len(public) + len(private) == len(everything)
    assert public.num_classes == private.num_classes == everything.num_classes == 12


def test_photos_deterministic():
    a = load_dataset("photos", split="private", resolution=32)
    b = load_dataset("photos", split="private", resolution=32, seed=7)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_crop_boxes_inside_image():
    for h, w in [(427, 640), (512, 512), (300, 451)]:
        boxes = crop_boxes(h, w)
        assert len(boxes) == len(set(boxes)) >= 21
        for top, left, side in boxes:
            assert 0 <= top and top + side <= h and 0 <= left and left + side <= w


# ---------------------------------------------------------------- sample_batch


def test_sample_batch_distinct_and_deterministic():
    data = load_dataset("digits", split="private")
    x1, y1 = sample_batch(data, 8, distinct_labels=True, seed=3)
    x2, y2 = sample_batch(data, 8, distinct_labels=True, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (8, 3, 32, 32) and y1.dtype == torch.int64
    assert len(set(y1.tolist())) == 8
    x3, y3 = sample_batch(data, 8, distinct_labels=True, seed=4)
    assert not torch.equal(x1, x3)
    # every sampled image really is a row of the dataset with that label
    for img, lab in zip(x1, y1):
        rows = (data.images == img).flatten(1).all(1).nonzero().flatten()
        assert len(rows) >= 1 and data.labels[rows[0]] == lab


def test_sample_batch_full_label_set_and_non_distinct():
    data = load_dataset("photos", split="private")
    _, labels = sample_batch(data, 6, distinct_labels=True)
    assert sorted(labels.tolist()) == list(range(6))
    x, y = sample_batch(data, 20, distinct_labels=False, seed=1)
    assert x.shape[0] == 20 and len(set(y.tolist())) < 20


def test_sample_batch_errors():
    data = load_dataset("photos", split="private")
    with pytest.raises(UserError, match="data.batch_size.*7"):
        sample_batch(data, 7, distinct_labels=True)
    with pytest.raises(UserError, match="data.batch_size"):
        sample_batch(data, len(data) + 1, distinct_labels=False)
    with pytest.raises(UserError, match="data.batch_size"):
        sample_batch(data, 0)


def test_subset():
    data = load_dataset("digits", split="private")
    sub = data.subset([3, 1])
    assert len(sub) == 2 and torch.equal(sub.images[0], data.images[3])
    assert sub.num_classes == 10 and sub.name == "digits"


# ---------------------------------------------------------------- CIFAR


def _write_cifar(directory: Path, variant: str, n: int = 6) -> dict[str, np.ndarray]:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    label_key = b"labels" if variant == "cifar10" else b"fine_labels"
    k = 10 if variant == "cifar10" else 100
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if variant == "cifar10" else ["train", "test"]
    written = {}
    for fname in files:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, k, size=n).tolist()
        with open(directory / fname, "wb") as f:
            pickle.dump({b"data": data, label_key: labels, b"batch_label": b"x"}, f)
        written[fname] = data
    meta_name, names_key = ("batches.meta", b"label_names") if variant == "cifar10" else ("meta", b"fine_label_names")
    with open(directory / meta_name, "wb") as f:
        pickle.dump({names_key: [f"class{i}".encode() for i in range(k)]}, f)
    return written


def test_cifar10_fake_pickles(tmp_path):
    written = _write_cifar(tmp_path / "cifar-10-batches-py", "cifar10")
    test = load_dataset("cifar10", split="test", root=str(tmp_path))  # parent dir accepted
    _check_images(test, 3, 32)
    assert len(test) == 6 and test.num_classes == 10 and test.class_names[3] == "class3"
    # row-major 3072 = 3 x 32 x 32, channel first
    expected = torch.from_numpy(written["test_batch"].reshape(-1, 3, 32, 32)).float() / 255
    assert torch.allclose(test.images, expected)
    train = load_dataset("cifar10", split="public", root=str(tmp_path / "cifar-10-batches-py"))
    assert len(train) == 30
    private = load_dataset("cifar10", split="private", root=str(tmp_path), resolution=16, channels=1)
    _check_images(private, 1, 16)
    assert len(load_dataset("cifar10", split="train", root=str(tmp_path), limit=8)) == 8


def test_cifar100_fake_pickles(tmp_path):
    _write_cifar(tmp_path / "cifar-100-python", "cifar100", n=5)
    data = load_dataset("cifar100", split="train", root=str(tmp_path), resolution=64)
    _check_images(data, 3, 64)
    assert data.num_classes == 100 and data.class_names[99] == "class99"


def test_cifar_missing_file_names_path(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py", "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError, match="data.root.*data_batch_3"):
        load_dataset("cifar10", split="train", root=str(tmp_path))


# ---------------------------------------------------------------- folder


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_folder_subfolders(tmp_path):
    colors = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}
    for name, color in colors.items():
        for i in range(3):
            _png(tmp_path / name / f"{i}.png", color)
    (tmp_path / "red" / "notes.txt").write_text("not an image")
    data = load_dataset("folder", split="all", root=str(tmp_path), resolution=16)
    _check_images(data, 3, 16)
    assert data.class_names == ["blue", "green", "red"] and len(data) == 9
    for img, lab in zip(data.images, data.labels):
        expected = torch.tensor(colors[data.class_names[lab]], dtype=torch.float32) / 255
        assert torch.allclose(img.mean(dim=(1, 2)), expected, atol=1e-3)
    # limit reads round-robin over classes
    assert sorted(load_dataset("folder", split="all", root=str(tmp_path), limit=3).labels.tolist()) == [0, 1, 2]
    # deterministic seeded half split
    pub = load_dataset("folder", split="public", root=str(tmp_path), seed=1)
    priv = load_dataset("folder", split="private", root=str(tmp_path), seed=1)
    assert len(pub) + len(priv) == 9 and len(pub) == 4
    assert torch.equal(pub.labels, load_dataset("folder", split="public", root=str(tmp_path), seed=1).labels)
    grey = load_dataset("folder", split="all", root=str(tmp_path), channels=1, resolution=8)
    _check_images(grey, 1, 8)


def test_folder_center_crop(tmp_path):
    img = Image.new("RGB", (30, 10), (255, 0, 0))
    img.paste((0, 0, 255), (10, 0, 20, 10))  # blue centre square, red borders
    (tmp_path / "a").mkdir()
    img.save(tmp_path / "a" / "x.png")
    data = load_dataset("folder", split="all", root=str(tmp_path), resolution=10)
    assert torch.allclose(data.images[0, 2], torch.ones(10, 10))
    assert torch.allclose(data.images[0, 0], torch.zeros(10, 10))


@pytest.mark.parametrize("label_file,sep,labels", [
    ("labels.csv", ",", ["cat", "dog", "cat", "dog"]),
    ("labels.txt", " ", ["2", "0", "2", "0"]),
])
def test_folder_label_file(tmp_path, label_file, sep, labels):
    names = ["d.png", "a.png", "c.png", "b.png"]
    for i, name in enumerate(names):
        _png(tmp_path / name, (60 * i, 0, 0))
    lines = ["filename,label"] if sep == "," else []
    lines += [f"{n}{sep}{lab}" for n, lab in zip(names, labels)]
    (tmp_path / label_file).write_text("\n".join(lines) + "\n")
    data = load_dataset("folder", split="all", root=str(tmp_path), resolution=8)
    _check_images(data, 3, 8)
    # files are read in name order: a, b, c, d
    by_name = dict(zip(names, labels))
    got = [data.class_names[i] for i in data.labels.tolist()]
    assert got == [by_name[n] for n in sorted(names)]
    if sep == ",":
        assert data.class_names == ["cat", "dog"]
    else:
        assert data.num_classes == 3
    assert len(load_dataset("folder", split="all", root=str(tmp_path), limit=2)) == 2


def test_folder_label_file_missing_image(tmp_path):
    _png(tmp_path / "a.png", (1, 2, 3))
    (tmp_path / "labels.csv").write_text("a.png,0\ngone.png,1\n")
    with pytest.raises(UserError, match="gone.png"):
        load_dataset("folder", split="all", root=str(tmp_path))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs,key", [
    ({"name": "mnist"}, "data.name"),
    ({"name": "digits", "split": "train"}, "data.split"),
    ({"name": "photos", "split": "test"}, "data.split"),
    ({"name": "cifar10", "split": "valid", "root": "."}, "data.split"),
    ({"name": "folder", "split": "train", "root": "."}, "data.split"),
    ({"name": "digits", "channels": 2}, "data.channels"),
    ({"name": "digits", "resolution": 0}, "data.resolution"),
    ({"name": "cifar10"}, "data.root"),
    ({"name": "folder"}, "data.root"),
    ({"name": "digits", "limit": 0}, "data.limit"),
])
def test_bad_input_user_error(kwargs, key):
    with pytest.raises(UserError) as info:
        load_dataset(**kwargs)
    msg = str(info.value)
    assert msg.startswith(key) and "\n" not in msg and "allowed" in msg


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "folder"])
def test_missing_root_names_path(tmp_path, name):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(UserError, match="data.root") as info:
        load_dataset(name, split="test" if name.startswith("cifar") else "all", root=str(missing))
    assert str(missing) in str(info.value)


def test_bad_name_lists_allowed():
    with pytest.raises(UserError) as info:
        load_dataset("imagenet")
    assert "'imagenet'" in str(info.value) and "digits" in str(info.value)


def test_photo_corpus_excludes_private_photos_and_folds_hold_out_scenes(monkeypatch):
    import numpy as np

    from gradleak.data import photo_corpus as pc
    from gradleak.data.photos import PRIVATE_PHOTOS, read_photo

    monkeypatch.setattr(pc, "CROPS_PER_PHOTO", 2)
    pc._built.cache_clear()
    try:
        everything = load_dataset("photo-corpus", split="public", resolution=16, channels=3)
        _check_images(everything, 3, 16)
        names = {everything.class_names[i] for i in everything.labels.tolist()}
        assert not names & set(PRIVATE_PHOTOS) and "cat" not in names  # chelsea = cat is private
        assert len(everything) == 2 * len(names) and len(names) >= 10
        # no private photograph is among the corpus' source files
        corpus_views = [v for n in pc.SCENES for v in pc.read_scene(n)]
        for p in PRIVATE_PHOTOS:
            priv = read_photo(p)
            assert not any(v.shape == priv.shape and np.array_equal(v, priv) for v in corpus_views), p
        for k, held in enumerate(pc.FOLDS):
            tr = load_dataset("photo-corpus", split=f"fold{k}-train", resolution=16)
            te = load_dataset("photo-corpus", split=f"fold{k}-test", resolution=16)
            assert {te.class_names[i] for i in te.labels.tolist()} == set(held)
            assert not set(tr.labels.tolist()) & set(te.labels.tolist()) and len(tr) + len(te) == len(everything)
        again = load_dataset("photo-corpus", split="public", resolution=16, channels=3)
        assert torch.equal(again.images, everything.images)  # seeded augmentation
    finally:
        pc._built.cache_clear()
