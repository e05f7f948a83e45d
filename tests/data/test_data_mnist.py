"""MNIST / Fashion-MNIST IDX loading (real files when NNLANG_DATA_DIR is set), samples, encode."""
import gzip
import struct
import zlib

import numpy as np
import pytest

from nnlang.data import DataError, load_dataset
from nnlang.data.mnist import FILES, from_uint8, read_idx

# Independent facts from the datasets' documentation (shared datasets README).
MNIST_TRAIN_HIST = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_HIST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_real(real_data):
    ds = load_dataset("mnist", data_dir=real_data("mnist/train-images-idx3-ubyte.gz"))
    assert ds.train["image"].shape == (60000, 1, 28, 28) and ds.train["image"].dtype == np.float32
    assert ds.test["image"].shape == (10000, 1, 28, 28)
    assert np.bincount(ds.train["label"]).tolist() == MNIST_TRAIN_HIST
    assert np.bincount(ds.test["label"]).tolist() == MNIST_TEST_HIST
    assert ds.train["label"].dtype == np.int32
    assert 0.0 <= ds.train["image"].min() and ds.train["image"].max() == 1.0
    assert round(float(ds.train["image"].mean(dtype=np.float64)) * 255, 2) == 33.32
    assert ds.inputs == ["image"] and ds.targets == ["label"] and ds.meta["num_classes"] == 10


def test_fashion_mnist_real(real_data):
    root = real_data("fashion-mnist/train-images-idx3-ubyte.gz")
    ds = load_dataset("fashion_mnist", data_dir=root)
    assert ds.name == "fashion-mnist" and ds.meta["class_names"][9] == "Ankle boot"
    assert np.bincount(ds.train["label"]).tolist() == [6000] * 10
    assert np.bincount(ds.test["label"]).tolist() == [1000] * 10


@pytest.mark.parametrize("have, want", [("mnist", "fashion-mnist"), ("fashion-mnist", "mnist")])
def test_one_data_set_is_not_taken_for_the_other(real_data, tmp_path, have, want):
    """Both data sets' files have the same names, and a folder is also searched itself (not
    only <folder>/<name>/): `--data fashion-mnist --data-dir DIR/mnist` loaded the digits as
    clothes and eval printed their scores as Fashion-MNIST's."""
    root = real_data(f"{have}/train-labels-idx1-ubyte.gz") / have
    with pytest.raises(DataError, match=f"{have}'s .*not {want}'s"):
        load_dataset(want, data_dir=root)


def test_env_var_is_searched(real_data, monkeypatch):
    monkeypatch.setenv("NNLANG_DATA_DIR", str(real_data("mnist/t10k-labels-idx1-ubyte.gz")))
    assert load_dataset("mnist").meta["source"]["test_label"].endswith("t10k-labels-idx1-ubyte.gz")


def _idx(arr: np.ndarray) -> bytes:
    return struct.pack(f">HBB{arr.ndim}I", 0, 8, arr.ndim, *arr.shape) + arr.tobytes()


@pytest.fixture
def tiny_mnist(tmp_path):
    """Raw (un-gzipped) IDX files with the official names minus .gz, in <dir>/mnist/."""
    rng = np.random.default_rng(0)
    d = tmp_path / "mnist"
    d.mkdir()
    for key, stem in FILES.items():
        n = 6 if key.startswith("train") else 4
        arr = rng.integers(0, 256, (n, 28, 28)) if key.endswith("image") else np.arange(n) % 10
        (d / stem).write_bytes(_idx(arr.astype(np.uint8)))
    return tmp_path


def test_ungzipped_names_accepted(tiny_mnist):
    """The un-gzipped names are found; these tiny files are then refused for their counts."""
    with pytest.raises(DataError, match="shape \\[6, 28, 28\\], expected \\[60000, 28, 28\\]") as e:
        load_dataset("mnist", data_dir=tiny_mnist)
    assert str(tiny_mnist / "mnist" / FILES["train_image"]) in e.value.message
    raw = read_idx(tiny_mnist / "mnist" / FILES["train_image"])
    ds = from_uint8("t", {k: read_idx(tiny_mnist / "mnist" / s) for k, s in FILES.items()},
                    list("0123456789"), {})
    assert (len(ds.train), len(ds.test)) == (6, 4)
    np.testing.assert_allclose(ds.train["image"][:, 0] * 255, raw, atol=1e-4)


@pytest.mark.parametrize("damage, match", [
    (lambda b: b[:-10], "is corrupt: truncated or corrupt IDX data"),
    (lambda b: b"\0\0\x09\x03" + b[4:], "is corrupt: not a uint8 IDX"),
    (lambda b: gzip.compress(b)[:-20], "is corrupt: truncated gzip"),
])
def test_corrupt_file_names_the_file(tiny_mnist, damage, match):
    path = tiny_mnist / "mnist" / FILES["train_image"]  # read first
    data = damage(path.read_bytes())
    if data[:2] == b"\x1f\x8b":
        path.unlink()
        path = path.with_name(path.name + ".gz")
    path.write_bytes(data)
    with pytest.raises(DataError, match=match) as e:
        load_dataset("mnist", data_dir=tiny_mnist)
    assert str(path) in e.value.message


def test_sample_loads():
    ds = load_dataset("mnist-sample")
    assert ds.meta["sample"] is True and ds.meta["counts"] == {"train": 5000, "test": 1000}
    assert ds.train["image"].shape == (5000, 1, 28, 28) and ds.train["image"].max() <= 1.0
    hist = np.bincount(ds.train["label"], minlength=10)
    assert hist.min() > 400 and hist.sum() == 5000
    assert np.bincount(ds.test["label"], minlength=10).min() > 80


def _png(path, img: np.ndarray, color: int):
    """A minimal PNG writer using a different filter on each row (Sub/Up/Average/Paeth)."""
    h, w = img.shape[:2]
    rows = img.reshape(h, -1).astype(np.int32)
    bpp = img.shape[2] if img.ndim == 3 else 1
    raw = b""
    for y in range(h):
        f, line, prev = y % 5, rows[y], rows[y - 1] if y else np.zeros_like(rows[0])
        left = np.concatenate([np.zeros(bpp, np.int32), line[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        if f == 4:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        else:
            pred = [0 * line, left, prev, (left + prev) // 2][f]
        raw += bytes([f]) + ((line - pred) % 256).astype(np.uint8).tobytes()

    def chunk(kind, body):
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color,
                     0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_encode_image(tmp_path):
    ds = load_dataset("mnist-sample")
    digit = (ds.test["image"][0, 0] * 255).round().astype(np.uint8)
    want = ds.test["image"][:1]
    for raw in (digit, digit.astype(np.float32) / 255, digit.reshape(784)):
        out = ds.encode(raw)["image"]
        assert out.shape == (1, 1, 28, 28) and out.dtype == np.float32
        np.testing.assert_allclose(out, want, atol=1e-6)
    np.save(tmp_path / "d.npy", digit)
    np.testing.assert_allclose(ds.encode(tmp_path / "d.npy")["image"], want, atol=1e-6)
    _png(tmp_path / "g.png", digit, color=0)
    np.testing.assert_allclose(ds.encode(str(tmp_path / "g.png"))["image"], want, atol=1e-6)
    _png(tmp_path / "c.png", np.repeat(digit[..., None], 4, axis=2), color=6)
    np.testing.assert_allclose(ds.encode(tmp_path / "c.png")["image"], want, atol=1e-6)
    with pytest.raises(DataError, match="expected"):
        ds.encode(np.zeros((32, 32), np.uint8))
    # channels first or last, with or without the channel, are the same single-channel image
    for raw in (digit[None], digit[..., None]):
        np.testing.assert_allclose(ds.encode(raw)["image"], want, atol=1e-6)


def test_a_colour_png_is_the_mean_of_its_channels_under_every_filter(tmp_path):
    """image.py reads colour as the mean of R, G and B. The PNGs above are grey (four equal
    channels), so reading one channel alone passed; and their smooth digit never made the
    Paeth predictor's distances tie, where the spec (RFC 2083 6.6) takes a before b before c.
    Random colour pixels under all five filters (_png's rows cycle through them), against the
    channels' mean in numpy."""
    from nnlang.data.image import read_png
    # NOTE: levels where pb == pc with b != c (2a + b = 3c: 50, 200, 100) happen; with a
    # tie of pa and pb, pc is 0 and c wins whichever way the first tie is read
    rgb = np.random.default_rng(0).choice([0, 50, 100, 200, 250], (30, 17, 3)).astype(np.uint8)
    _png(tmp_path / "rgb.png", rgb, color=2)
    np.testing.assert_array_equal(read_png(tmp_path / "rgb.png"),
                                  np.rint(rgb.astype(np.float64).mean(-1)).astype(np.uint8))


def test_encode_image_refuses_another_size_with_as_many_pixels(tmp_path):
    # 14 x 56 (or 56 x 14) has MNIST's 784 pixels: reshaped to 28 x 28 it fed the model a
    # scrambled digit and printed a confident-looking class
    ds = load_dataset("mnist-sample")
    wide = (ds.test["image"][0, 0] * 255).round().astype(np.uint8).reshape(14, 56)
    _png(tmp_path / "wide.png", wide, color=0)
    for raw in (tmp_path / "wide.png", wide, wide.T, wide[None]):
        with pytest.raises(DataError, match=r"28 x 28"):
            ds.encode(raw)
