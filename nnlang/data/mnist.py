"""MNIST and Fashion-MNIST loaders: IDX files (gzipped or not) -> `Dataset` of images + labels.

`image` is float32 [N, 1, 28, 28] = pixels / 255, in [0, 1]; deliberately no mean/std
normalization (the model can add it). `label` is int32 [N]. No validation split here.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from nnlang.data.cache import (DataError, Remote, checked_gzip, corrupt, fetch, file_hash,
                               origin)
from nnlang.data.dataset import Dataset, Split

FILES = {"train_image": "train-images-idx3-ubyte", "train_label": "train-labels-idx1-ubyte",
         "test_image": "t10k-images-idx3-ubyte", "test_label": "t10k-labels-idx1-ubyte"}

# TFDS' mirror of LeCun's files (yann.lecun.com is often unreachable) with TFDS' published sha256.
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
MNIST_SHA256 = {
    "train_image": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train_label": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "test_image": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "test_label": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
# Zalando's official md5s, of the upstream .gz files. NOTE: Debian's repacked .gz files (same
# data, different gzip header) do not match these; they are only used to verify downloads.
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MD5 = {
    "train_image": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train_label": "25c81989df183df01b3e8a0aad5dffbe",
    "test_image": "bef4ecab320f06d8554ea6380940ec79",
    "test_label": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


# sha256 of other good local copies: the un-gzipped IDX files (published by TFDS and others)
# and, for Fashion-MNIST, Debian's dataset-fashion-mnist .gz files (same data, other header).
KNOWN_SHA256 = {
    "mnist": {
        "train_image": ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",),
        "train_label": ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",),
        "test_image": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",),
        "test_label": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",),
    },
    "fashion-mnist": {
        "train_image": ("b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
                        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        "train_label": ("0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
                        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        "test_image": ("cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
                       "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        "test_label": ("8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
                       "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    },
}
# Every release of both data sets: 28x28 images, 60,000 train and 10,000 test, classes 0-9.
COUNTS = {"train": 60000, "test": 10000}


def remotes(name: str) -> list[Remote]:
    url, sums, algo = ((MNIST_URL, MNIST_SHA256, "sha256") if name == "mnist"
                       else (FASHION_URL, FASHION_MD5, "md5"))
    return [Remote(f"{stem}.gz", url + f"{stem}.gz", f"{algo}:{sums[key]}", aliases=(stem,),
                   known=KNOWN_SHA256[name][key])
            for key, stem in FILES.items()]


def load_mnist(data_dir=None) -> Dataset:
    """The 60,000/10,000 handwritten digits of LeCun et al."""
    return _load("mnist", data_dir, [str(i) for i in range(10)])


def load_fashion_mnist(data_dir=None) -> Dataset:
    """Zalando's 60,000/10,000 clothing images, 10 classes (meta["class_names"])."""
    return _load("fashion-mnist", data_dir, FASHION_CLASSES)


def _load(name: str, data_dir, class_names: list[str]) -> Dataset:
    """Every file is read whole (gzip CRC and length checked) and its shape, count and label
    range checked, so a damaged file is an error naming it, never a partial data set."""
    paths = fetch(name, remotes(name), data_dir)
    _not_the_other(name, paths, data_dir)
    arrays = {}
    for (key, stem), remote in zip(FILES.items(), remotes(name)):
        path = paths[f"{stem}.gz"]
        arr = read_idx(path, data_dir, remote)
        split, kind = key.split("_")
        want = (COUNTS[split], 28, 28) if kind == "image" else (COUNTS[split],)
        if arr.shape != want:
            raise corrupt(path, f"holds {kind}s of shape {list(arr.shape)}, expected "
                          f"{list(want)}", data_dir, remote, file_hash(path))
        if kind == "label" and arr.max() >= len(class_names):
            row = int(np.argmax(arr >= len(class_names)))
            raise corrupt(path, f"label {arr[row]} at row {row} is not a class 0-"
                          f"{len(class_names) - 1}", data_dir, remote, file_hash(path))
        arrays[key] = arr
    meta = {"source": {k: str(paths[f"{s}.gz"]) for k, s in FILES.items()}}
    return from_uint8(name, arrays, class_names, meta)


def _not_the_other(name: str, paths: dict[str, Path], data_dir) -> None:
    """Both data sets use the same file names, and a search root is also searched itself:
    `--data fashion-mnist --data-dir DIR/mnist` found the digits and loaded them as clothes.
    The label files (small: cheap to hash on every load) tell the two apart by their
    published checksums."""
    other = "fashion-mnist" if name == "mnist" else "mnist"
    for (key, stem), remote in zip(FILES.items(), remotes(other)):
        if not key.endswith("label"):
            continue
        path = paths[f"{stem}.gz"]
        algo, published = remote.checksum.split(":", 1)
        if file_hash(path) in remote.sha256s() or file_hash(path, algo) == published:
            raise DataError(f"{path} is {other}'s file (its checksum is {other}'s published "
                            f"one), not {name}'s; found through {origin(path, data_dir)}",
                            f"put {name}'s files in <dir>/{name}/ (its folder is searched "
                            "before <dir> itself)")


def from_uint8(name: str, arrays: dict, class_names: list[str], meta: dict) -> Dataset:
    """{train,test}_{image,label} uint8 arrays -> Dataset (shared with `mnist-sample`)."""
    splits = {}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_image"], arrays[f"{split}_label"]
        if images.ndim != 3 or len(images) != len(labels):
            raise DataError(f"{name}: {split} has {len(images)} images of shape "
                            f"{images.shape[1:]} but {len(labels)} labels")
        splits[split] = Split({"image": images[:, None].astype(np.float32) / np.float32(255),
                               "label": labels.astype(np.int32)})
    meta = {"kind": "image", "image_shape": [1, *images.shape[1:]], "scale": "pixels/255",
            "num_classes": len(class_names), "class_names": class_names, **meta}
    return Dataset(name, splits["train"], splits["test"], ["image"], ["label"], meta)


def read_idx(path: Path, data_dir=None, remote: Remote | None = None) -> np.ndarray:
    """An IDX file of uint8 (magic 0x0000 08 <ndim>) -> array; checks magic and size."""
    try:
        if path.suffix == ".gz":
            with checked_gzip(path, data_dir, remote) as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise corrupt(path, f"not a uint8 IDX file (magic {data[:4].hex() or 'empty'}, "
                      "expected 00000801 or 00000803)", data_dir, remote, file_hash(path))
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim]) if len(data) >= 4 + 4 * ndim else ()
    want = 4 + 4 * ndim + int(np.prod(dims)) if dims else -1
    if len(data) != want:
        raise corrupt(path, f"truncated or corrupt IDX data: header says {dims}, the data has "
                      f"{len(data):,} bytes, expected {want:,}", data_dir, remote,
                      file_hash(path))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
