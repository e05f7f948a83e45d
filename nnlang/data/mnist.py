"""MNIST and Fashion-MNIST loaders: IDX files (gzipped or not) -> `Dataset` of images + labels.

`image` is float32 [N, 1, 28, 28] = pixels / 255, in [0, 1]; deliberately no mean/std
normalization (the model can add it). `label` is int32 [N]. No validation split here.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from nnlang.data.cache import DataError, Remote, fetch
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


def remotes(name: str) -> list[Remote]:
    url, sums, algo = ((MNIST_URL, MNIST_SHA256, "sha256") if name == "mnist"
                       else (FASHION_URL, FASHION_MD5, "md5"))
    return [Remote(f"{stem}.gz", url + f"{stem}.gz", f"{algo}:{sums[key]}", aliases=(stem,))
            for key, stem in FILES.items()]


def load_mnist(data_dir=None) -> Dataset:
    """The 60,000/10,000 handwritten digits of LeCun et al."""
    return _load("mnist", data_dir, [str(i) for i in range(10)])


def load_fashion_mnist(data_dir=None) -> Dataset:
    """Zalando's 60,000/10,000 clothing images, 10 classes (meta["class_names"])."""
    return _load("fashion-mnist", data_dir, FASHION_CLASSES)


def _load(name: str, data_dir, class_names: list[str]) -> Dataset:
    paths = fetch(name, remotes(name), data_dir)
    arrays = {key: read_idx(paths[f"{stem}.gz"]) for key, stem in FILES.items()}
    meta = {"source": {k: str(paths[f"{s}.gz"]) for k, s in FILES.items()}}
    return from_uint8(name, arrays, class_names, meta)


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


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of uint8 (magic 0x0000 08 <ndim>) -> array; checks magic and size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is truncated or corrupt ({e})",
                        "delete it so it is downloaded again, or replace it") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise DataError(f"{path} is not a uint8 IDX file (magic {data[:4].hex() or 'empty'})")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim]) if len(data) >= 4 + 4 * ndim else ()
    want = 4 + 4 * ndim + int(np.prod(dims)) if dims else -1
    if len(data) != want:
        raise DataError(f"{path} is truncated or corrupt: header says {dims}, "
                        f"file has {len(data)} bytes, expected {want}")
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
