"""Raw image -> model input for `predict` (`Dataset.encode`), including a tiny PNG reader.

Scaling matches the loaders: uint8 pixels / 255 -> [0, 1], no mean/std normalization and no
colour inversion (MNIST digits are white on black; a black-on-white drawing must be inverted
by the user). No resizing: the image must already be 28x28 (or whatever `image_shape` says).
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from nnlang.data.cache import DataError
from nnlang.files import read_npy


def encode_image(raw, image_shape) -> np.ndarray:
    """Array, .npy or .png path -> float32 [1, *image_shape] in [0, 1]."""
    where = f"{raw}: " if isinstance(raw, (str, Path)) else ""
    if isinstance(raw, (str, Path)):
        raw = load_image_file(Path(raw))
    img = np.asarray(raw)
    # NOTE: the pixel count alone is not enough: a 14 x 56 image has 28 x 28's 784 pixels and
    # reshaped into it fed the model a scrambled picture. Flat rows (784 values, as an MLP's
    # input) are taken; any other layout must be the image's own, up to size-1 axes (a channel
    # first or last).
    want = [d for d in image_shape if d != 1]
    if img.size != int(np.prod(image_shape)) or \
            (img.ndim > 1 and [d for d in img.shape if d != 1] != want):
        raise DataError(f"{where}image has shape {img.shape}, expected "
                        f"{' x '.join(map(str, want))} ({int(np.prod(image_shape))} pixels)",
                        "resize it first; nnlang does not resample images")
    if img.dtype == np.uint8 or (img.size and float(img.max()) > 1.0):
        img = img.astype(np.float32) / 255.0  # raw 0..255 pixels, as in the IDX files
    return img.astype(np.float32).reshape(1, *image_shape)


def load_image_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    if path.suffix.lower() == ".npy":
        return read_npy(path)
    if path.suffix.lower() == ".png":
        return read_png(path)
    raise DataError(f"unsupported image file {path}", "use a .png or .npy file")


def read_png(path: Path) -> np.ndarray:
    """8-bit, non-interlaced PNG -> uint8 [H, W] grayscale (colour is averaged, alpha dropped)."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise DataError(f"{path} is not a PNG file")
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise DataError(f"{path} is a truncated or corrupt PNG")
    w, h, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        raise DataError(f"{path}: only 8-bit non-interlaced gray/RGB(A) PNGs are supported "
                        f"(bit depth {depth}, colour type {color}, interlace {interlace})")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error:
        raise DataError(f"{path} is a truncated or corrupt PNG") from None
    if len(raw) < h * (w * channels + 1):
        raise DataError(f"{path} is a truncated or corrupt PNG")
    px = _unfilter(raw, h, w * channels, channels).reshape(h, w, channels)
    gray = px[..., :3].mean(-1) if channels >= 3 else px[..., 0]
    return np.rint(gray).astype(np.uint8)


def _unfilter(raw: bytes, h: int, stride: int, bpp: int) -> np.ndarray:
    rows = np.frombuffer(raw, np.uint8)[: h * (stride + 1)].reshape(h, stride + 1).astype(np.int32)
    out = np.zeros((h, stride), np.int32)
    for y in range(h):
        ftype, line = rows[y, 0], rows[y, 1:]
        prev = out[y - 1] if y else np.zeros(stride, np.int32)
        if ftype in (0, 2):
            out[y] = (line + (prev if ftype == 2 else 0)) & 0xFF
            continue
        cur = out[y]
        for x in range(stride):  # Sub/Average/Paeth depend on the byte just decoded
            a = cur[x - bpp] if x >= bpp else 0
            b, c = prev[x], (prev[x - bpp] if x >= bpp else 0)
            if ftype == 1:
                pred = a
            elif ftype == 3:
                pred = (a + b) >> 1
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[x] = (line[x] + pred) & 0xFF
    return out.astype(np.uint8)
