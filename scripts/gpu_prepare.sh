#!/usr/bin/env bash
# Fills .gpu/ (git-ignored) with what scripts/gpu_run.sh needs on a GPU machine that reaches no
# package index: lark's wheel (the one package nnlang needs that the 'cuda' image lacks), and
# Fashion-MNIST and IMDB recompressed with xz, so that they and the working tree fit in the
# 64 MiB the device tool carries (as .gz they do not: 59 MB of data and a 10 MB tree).
# Run once, here, with network; then carry=[".gpu"] (docs/performance.md, "The GPU run").
#
#   scripts/gpu_prepare.sh        the data from $NNLANG_DATA_DIR (else /work/shared/datasets)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="${NNLANG_DATA_DIR:-/work/shared/datasets}"
PY="${PYTHON:-python3}"
mkdir -p .gpu/wheels .gpu/data/fashion-mnist

# NOTE: the lark the tests pass with here; pure Python, so one wheel serves any machine
lark=$("$PY" -c "import lark; print(lark.__version__)")
ls .gpu/wheels/lark-"$lark"-*.whl > /dev/null 2>&1 \
    || "$PY" -m pip download -q --no-deps --only-binary=:all: -d .gpu/wheels "lark==$lark"

# xz of the uncompressed files: nnlang reads the bare IDX files (their published sha256 are
# known) and an extracted aclImdb/ folder, so the device only unpacks
# (-9e: a few minutes a data set, once; the two run side by side)
pack() {  # SOURCE.gz TARGET.xz
    [ -s "$2" ] && return 0
    gzip -dc "$1" | xz -9e > "$2.part" && mv "$2.part" "$2"
}
pack "$(ls "$SRC"/imdb/aclImdb_v1*.tar.gz | head -n 1)" .gpu/data/imdb.tar.xz &
imdb=$!
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
         t10k-labels-idx1-ubyte; do
    pack "$SRC/fashion-mnist/$f.gz" ".gpu/data/fashion-mnist/$f.xz"
done
wait "$imdb"

# what the device tool sends: tracked and untracked-not-ignored files, and the carried .gpu
tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -n 1 \
       | cut -f1)
gpu=$(du -sb .gpu | cut -f1)
limit=$((64 * 1024 * 1024))
echo "tree $((tree >> 20)) MiB + .gpu $((gpu >> 20)) MiB of $((limit >> 20)) MiB"
if [ $((tree + gpu)) -gt "$limit" ]; then
    echo "too big for the device tool: leave out .gpu/data/imdb.tar.xz (the LSTM and" \
         "generation steps then fail for want of data, the rest runs)" >&2
    exit 1
fi
