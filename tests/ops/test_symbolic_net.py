"""One compiled net whose sequence dim is a `symbol` runs several lengths: each call binds the
length from its feeds and gets its own plan, the kernels are the ones compiled for the first
length (no new source, no compile), and the values equal those of a fresh net declared with that
length as a number.
"""
from __future__ import annotations

import numpy as np
import pytest

import nnlang
from nnlang.backends.base import get_backend
from nnlang.errors import NNError
from tests.symbolic_lengths import assert_fresh_nets_agree

# attention-style pooling over the symbolic axis (a softmax and a sum across it), a padding mask,
# a dense layer on the last axis: the reductions and broadcasts a length touches
SOURCE = """
model Pool {
  symbol seq
  input x: float32[batch, seq, 4]
  input label: float32[batch]
  mask = cast(x[:, :, 0] != 0.0, dtype = "float32") |> unsqueeze(axis = -1)
  h = dense(x, 6) |> tanh
  score = dense(h, 1) + (mask - 1.0) * 1e4
  w = softmax(score, axis = 1)
  pooled = sum(h * w, axis = 1)
  y = dense(pooled, 1) |> squeeze(axis = -1)
  output out = y
  loss mse(y, label)
}
train Pool {
  optimizer = adam(lr = 0.01)
  batch = 3
}
"""
LENGTHS = (5, 9, 2)


def concrete(n: int, source: str = SOURCE) -> str:
    return source.replace("  symbol seq\n", "").replace("seq", str(n))


def feeds(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3, n, 4)).astype(np.float32)
    x[0, n // 2:, :] = 0.0  # a padded tail
    return {"x": x, "label": rng.normal(size=3).astype(np.float32)}


def kernel_count(backend) -> tuple[int, int]:
    """(kernel sources loaded, signatures compiled or loaded from disk) in this process."""
    return len(backend._modules), backend.compiled + backend.cache_hits


def run_lengths(net, lengths, make_feeds) -> dict:
    """{length: (loss, forward output, parameters)} of one train step and one forward at each
    length in turn; every length after the first compiles no kernel."""
    backend = get_backend("numba")
    got = {}
    for k, n in enumerate(lengths):
        if k == 1:
            after_first = kernel_count(backend)
        loss = net.train_step(make_feeds(n, k))
        got[n] = (loss, net.forward(make_feeds(n, 10 + k))["out"], net.parameters())
    assert kernel_count(backend) == after_first, "a new length compiled new kernels"
    return got


def test_one_net_runs_every_length_with_the_same_kernels():
    net = nnlang.compile(SOURCE, seed=3)
    got = run_lengths(net, LENGTHS, feeds)
    assert {key[2] for key in net._exes if key[0] == "train"} == {(("seq", n),) for n in LENGTHS}

    assert_fresh_nets_agree(concrete, LENGTHS, feeds, got, seed=3)


# a mean over the symbolic axis, a pooled mean and a per-token loss and metric: each divides by a
# count that grows with the length (a const once the length is bound)
MEANS = """
model Means {
  symbol seq
  input x: float32[batch, seq, 4]
  input label: int32[batch, seq]
  h = dense(x, 5) |> tanh
  m = mean(h, axis = 1) + sqrt(var(h, axis = 1) + 1e-3)
  pooled = global_avg_pool(permute(h, [0, 2, 1]))
  logits = h + unsqueeze(dense(concat(m, pooled, axis = -1), 5), axis = 1)
  output out = logits
  loss cross_entropy(logits, label)
  metric acc = accuracy(logits, label)
}
train Means {
  optimizer = sgd(lr = 0.1)
  batch = 3
}
"""


def test_means_over_a_symbolic_axis_compile_no_kernel_per_length():
    """The issue's promise: a new length builds a plan from the kernels it has. A mean's count
    was written into its kernel as a literal (`x / 9.0`), so every length compiled new kernels
    (1-1.5 s a length instead of about 0.05)."""
    def means_feeds(n, seed):
        rng = np.random.default_rng(seed)
        return {"x": rng.normal(size=(3, n, 4)).astype(np.float32),
                "label": rng.integers(0, 5, size=(3, n)).astype(np.int32)}

    lengths = (5, 9, 2)
    net = nnlang.compile(MEANS, seed=4)
    got = run_lengths(net, lengths, means_feeds)
    assert_fresh_nets_agree(lambda n: concrete(n, MEANS), lengths, means_feeds, got, seed=4)
    # a new batch size (an evaluation's last partial batch) divides by other counts too
    three = means_feeds(9, 7)
    net.evaluate(three)
    after_eval = kernel_count(get_backend("numba"))
    net.evaluate({k: np.concatenate([v, v[:2]]) for k, v in three.items()})
    assert kernel_count(get_backend("numba")) == after_eval, "a new batch size compiled new kernels"


def test_inputs_sharing_a_symbol_must_agree():
    src = SOURCE.replace("input label: float32[batch]", "input label: float32[batch, seq]") \
        .replace("loss mse(y, label)", "loss mse(y, sum(label, axis = 1))")
    net = nnlang.compile(src)
    with pytest.raises(NNError, match="input 'label' has seq = 4 .* input 'x' has seq = 5") as e:
        net.forward({"x": np.ones((3, 5, 4), np.float32),
                     "label": np.ones((3, 4), np.float32)})
    assert "pad them to the same length" in e.value.hint
    with pytest.raises(NNError, match="input 'label' has batch = 2 .* input 'x' has batch = 3") \
            as e:
        net.forward({"x": np.ones((3, 5, 4), np.float32),
                     "label": np.ones((2, 5), np.float32)})
    assert "give each as many rows" in e.value.hint   # NOTE: not "pad", which fits a length


def test_the_language_docs_example_runs_any_length():
    """docs/language.md's symbolic-length model (test_docs only checks it) runs two lengths."""
    import re
    from tests.regen import DOC
    src = next(b for b in re.findall(r"```nn\n(.*?)```", DOC.read_text(), re.S)
               if "model Reviews(vocab = 20000, embed" in b)
    net = nnlang.compile(src, backend="reference", overrides={"vocab": 50, "embed": 8})
    rng = np.random.default_rng(0)
    for n in (5, 37):
        tokens = rng.integers(0, 50, (2, n)).astype(np.int32)
        assert net.forward({"tokens": tokens})["prob"].shape == (2,)
        losses = net.evaluate({"tokens": tokens, "label": np.ones(2, np.float32)})
        assert losses and all(np.isfinite(v) for v in losses.values())


def test_least_recently_used_lengths_are_dropped(monkeypatch):
    from nnlang.runtime import net as net_module
    monkeypatch.setattr(net_module, "KEEP_LENGTHS", 1)  # one besides the length in use
    net = nnlang.compile(SOURCE, backend="reference")
    for n in (3, 4, 3, 5):
        net.forward({"x": np.ones((3, n, 4), np.float32)})
    assert sorted(key[2] for key in net._exes) == [(("seq", 3),), (("seq", 5),)]


def test_lengths_beyond_the_byte_budget_are_dropped(monkeypatch):
    from nnlang.runtime import net as net_module
    monkeypatch.setattr(net_module, "KEEP_BYTES", 1)  # any planned buffer is over it
    net = nnlang.compile(SOURCE, backend="numba")
    for n in (3, 4, 5):
        net.forward({"x": np.ones((3, n, 4), np.float32)})
    assert [key[2] for key in net._exes] == [(("seq", 5),)]


FIRST = """
model First {
  symbol seq
  input x: float32[batch, seq, 4]
  input label: float32[batch]
  h = dense(x, 5) |> tanh
  cls = h[:, 0]
  pair = sum(h[:, 1:3], axis = 1)
  y = dense(concat(cls, pair, axis = -1), 1) |> squeeze(axis = -1)
  output out = y
  loss mse(y, label)
}
train First {
  optimizer = sgd(lr = 0.1)
  batch = 3
}
"""


def test_fixed_entries_of_a_symbolic_axis():
    """x[:, 0] (a first token) and x[:, 1:3] on a symbolic length: the values and updates of
    fresh nets declared with each length."""
    lengths = (5, 3, 8)
    net = nnlang.compile(FIRST, seed=2)
    got = {}
    for k, n in enumerate(lengths):
        loss = net.train_step(feeds(n, k))
        got[n] = (loss, net.forward(feeds(n, 10 + k))["out"], net.parameters())
    assert_fresh_nets_agree(lambda n: concrete(n, FIRST), lengths, feeds, got, seed=2)


def test_a_sequence_shorter_than_a_fixed_slice_is_refused():
    """x[:, 1:3] at seq = 2 gave one entry where every later op was checked for two (an
    exported file folded the batch into the slice's axis)."""
    net = nnlang.compile(FIRST, seed=2)
    with pytest.raises(NNError, match=r"slice: with batch = 3, seq = 2 this gives \[3, 1, 5\], "
                                      r"but the model was checked as \[batch, 2, 5\]") as err:
        net.forward(feeds(2, 0))
    assert err.value.span.line == 8
    assert net.forward(feeds(3, 0))["out"].shape == (3,)


def test_squeeze_without_an_axis_keeps_symbols_bound_to_one():
    """squeeze() drops the axes that are 1 as checked; a batch of one or a one-token sequence
    kept its rank at check time and lost it at run time."""
    net = nnlang.compile("model S {\n  symbol seq\n  input x: float32[batch, seq, 1, 4]\n"
                         "  output y = mean(squeeze(x), axis = 1)\n}\n")
    x = np.arange(24, dtype=np.float32).reshape(3, 2, 1, 4)
    for rows, steps in ((3, 2), (1, 2), (3, 1), (1, 1)):
        part = x[:rows, :steps]
        np.testing.assert_allclose(net.forward({"x": part})["y"], part[:, :, 0].mean(axis=1))


WIDE = """
model Wide {
  symbol seq
  input x: float32[batch, seq, 128]
  input label: float32[batch]
  h = dense(x, 128)
  y = mean(h * h, axis = [1, 2])
  output out = y
  loss mse(y, label)
}
train Wide {
  optimizer = sgd(lr = 0.01)
  batch = 2
}
"""


def test_a_length_whose_bias_gradient_splits_by_columns_compiles_no_kernel(monkeypatch):
    """The dense bias gradient is a column sum over [batch * seq, 128]; from 1M elements it
    runs as column blocks on the pool, and it was rendered for the blocks' strided views only
    there: the first length past that size compiled new kernels (the Transformer's at seq 64
    and 256, batch 32)."""
    from nnlang.backends import numba_backend
    monkeypatch.setattr(numba_backend, "workers", lambda: 2)   # as on a machine of 2 cores

    def wide_feeds(n, seed):
        rng = np.random.default_rng(seed)
        return {"x": rng.normal(size=(2, n, 128)).astype(np.float32),
                "label": rng.normal(size=2).astype(np.float32)}

    lengths = (3, 4096, 5)   # 2 * 4096 * 128 elements: the split's size (1 << 20)
    net = nnlang.compile(WIDE, seed=5)
    got = run_lengths(net, lengths, wide_feeds)
    assert_fresh_nets_agree(lambda n: concrete(n, WIDE), lengths, wide_feeds, got, seed=5)
