"""Build the small real-data samples bundled with nnlang (`imdb-sample`, `mnist-sample`).

Run from the repo root, pointing at a folder laid out like NNLANG_DATA_DIR:
    python -m nnlang.data.samples.make_samples /path/to/datasets
It reads `imdb/aclImdb_v1*.tar.gz` and `mnist/*-ubyte.gz` there and writes, byte-reproducibly,
`imdb-sample.tar.gz` and `mnist-sample.npz` next to this script. Selection is by id, no RNG.
"""
from __future__ import annotations

import gzip
import io
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
# Every k-th review id (ids run 0..12499 per folder), identical for pos and neg so the sample is
# balanced: 1,250 + 1,250 train and 500 + 500 test.
IMDB_EVERY = {"train": 10, "test": 25}
# Every k-th image of the original order (which is roughly class-balanced): 5,000 and 1,000.
MNIST_EVERY = {"train": 12, "test": 10}
FIXED_MTIME = 1309046400  # 2011-06-26, the date of aclImdb v1, so the archive is reproducible
README = (b"imdb-sample: a SUBSET of the Large Movie Review Dataset v1.0 (Maas et al., ACL 2011),\n"
          b"review ids divisible by 10 (train) or 25 (test), pos and neg. NOT the full dataset.\n")


def make_imdb(src_root: Path, out: Path) -> None:
    from nnlang.data.imdb import _MEMBER  # same member-name rule as the loader
    src = sorted((src_root / "imdb").glob("aclImdb_v1*.tar.gz"))[0]
    picked = []
    with tarfile.open(src, "r:gz") as tar:
        for m in tar:
            hit = _MEMBER.match(m.name)
            if hit and m.isfile() and int(hit[3]) % IMDB_EVERY[hit[1]] == 0:
                name = f"aclImdb/{hit[1]}/{hit[2]}/{hit[3]}_{hit[4]}.txt"
                picked.append((name, tar.extractfile(m).read()))
    picked.append(("aclImdb/README-SAMPLE", README))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in sorted(picked):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), FIXED_MTIME, 0o644
            tar.addfile(info, io.BytesIO(data))
    with open(out, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(buf.getvalue())
    print(f"{out}: {len(picked) - 1} reviews, {out.stat().st_size:,} bytes")


def make_mnist(src_root: Path, out: Path) -> None:
    from nnlang.data.mnist import FILES, read_idx
    arrays = {}
    for key, stem in FILES.items():
        arr = read_idx(src_root / "mnist" / f"{stem}.gz")
        arrays[key] = np.ascontiguousarray(arr[:: MNIST_EVERY[key.split("_")[0]]])
    # zipfile by hand (not np.savez_compressed) so entries get a fixed timestamp.
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1998, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w") as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
    counts = {k: len(v) for k, v in arrays.items() if k.endswith("label")}
    print(f"{out}: {counts}, {out.stat().st_size:,} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = Path(sys.argv[1])
    make_imdb(root, HERE / "imdb-sample.tar.gz")
    make_mnist(root, HERE / "mnist-sample.npz")
