"""Textbook architectures written from scratch the way a student writes them, trained a few
steps against an identical PyTorch model (nnlang's initial weights copied in, float64, the same
batches): losses, gradients and weights after each step agree to ~1e-10. Each model here once
differed; a numpy reference of the same model keeps the check in CI, which has no PyTorch."""
from __future__ import annotations

import numpy as np
import pytest

import nnlang

# *** a Siamese network: one tower called twice with share =, a contrastive and a hinge loss ***

SIAMESE = """
block Tower(x) {
  return dense(x, 8) |> tanh |> dense(4)
}

model Siamese(margin = 1.0) {
  input left: float32[batch, 12]
  input right: float32[batch, 12]
  input same: float32[batch]
  a = Tower(left)
  b = Tower(right, share = a)
  d = sqrt(sum((a - b) ** 2, axis = -1) + 1e-6)
  loss contrastive = mean(same * d ** 2 + (1 - same) * relu(margin - d) ** 2)
  score = sum(a * b, axis = -1)
  loss hinge = 0.5 * mean(relu(1 - (2 * same - 1) * score))
}

train Siamese {
  optimizer = OPTIMIZER
  batch = 4
}
"""
TOWER = ("a.dense.weight", "a.dense.bias", "a.dense_1.weight", "a.dense_1.bias")


def _siamese_batches():
    rng = np.random.default_rng(0)
    return [{"left": rng.normal(size=(4, 12)), "right": rng.normal(size=(4, 12)),
             "same": rng.integers(0, 2, 4).astype(np.float64)} for _ in range(3)]


def _siamese_numpy(p, f):
    """The loss and its gradient by the tower's weights, the backward pass written out."""
    w1, b1, w2, b2 = (p[k] for k in TOWER)
    y, grads, total = f["same"], [np.zeros_like(p[k]) for k in TOWER], 0.0
    h = {s: np.tanh(f[s] @ w1 + b1) for s in ("left", "right")}
    a, b = (h[s] @ w2 + b2 for s in ("left", "right"))
    d = np.sqrt(((a - b) ** 2).sum(-1) + 1e-6)
    n = len(y)
    hinge = np.maximum(0.0, 1 - (2 * y - 1) * (a * b).sum(-1))
    total = np.mean(y * d ** 2 + (1 - y) * np.maximum(0.0, 1.0 - d) ** 2) + 0.5 * hinge.mean()
    dd = (2 * y * d - 2 * (1 - y) * np.maximum(0.0, 1.0 - d)) / n
    dscore = -0.5 * (hinge > 0) * (2 * y - 1) / n
    da = dd[:, None] * (a - b) / d[:, None] + dscore[:, None] * b
    db = -dd[:, None] * (a - b) / d[:, None] + dscore[:, None] * a
    for s, g in (("left", da), ("right", db)):
        grads[2] += h[s].T @ g
        grads[3] += g.sum(0)
        gh = (g @ w2.T) * (1 - h[s] ** 2)
        grads[0] += f[s].T @ gh
        grads[1] += gh.sum(0)
    return total, dict(zip(TOWER, grads))


def _siamese_net(optimizer):
    return nnlang.compile(SIAMESE.replace("OPTIMIZER", optimizer), dtype="float64", batch=4,
                          seed=1)


def test_siamese_tower_shares_its_weights_numpy():
    """`b = Tower(right, share = a)` with a tower that ends in a dense layer: the second call
    made weights of its own (a.dense_1.dense.weight, ...), 280 parameters instead of 140, and the
    towers trained apart. SGD with momentum against the numpy loss and gradients."""
    net = _siamese_net("sgd(lr = 0.1, momentum = 0.9)")
    p = net.parameters()
    assert sorted(p) == sorted(TOWER)
    velocity = {k: np.zeros_like(v) for k, v in p.items()}
    for f in _siamese_batches():
        want, grads = _siamese_numpy(p, f)
        got = net.gradients(f)
        for k in TOWER:
            np.testing.assert_allclose(got[k], grads[k], rtol=1e-9, atol=1e-12, err_msg=k)
        assert net.train_step(f) == pytest.approx(want, rel=1e-12)
        for k in TOWER:   # torch.optim.SGD: v = momentum v + g; w -= lr v
            velocity[k] = 0.9 * velocity[k] + grads[k]
            p[k] = p[k] - 0.1 * velocity[k]
        for k, v in net.parameters().items():
            np.testing.assert_allclose(v, p[k], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("optimizer", ["sgd(lr = 0.1, momentum = 0.9)", "adam(lr = 0.01)"])
def test_siamese_tower_against_pytorch(optimizer):
    torch = pytest.importorskip("torch")
    net = _siamese_net(optimizer)
    p = net.parameters()
    assert sorted(p) == sorted(TOWER)
    t = {k: torch.tensor(p[k], dtype=torch.float64, requires_grad=True) for k in TOWER}
    opt = (torch.optim.SGD(list(t.values()), lr=0.1, momentum=0.9) if optimizer.startswith("sgd")
           else torch.optim.Adam(list(t.values()), lr=0.01))

    def tower(x):
        return torch.tanh(x @ t["a.dense.weight"] + t["a.dense.bias"]) @ t["a.dense_1.weight"] \
            + t["a.dense_1.bias"]

    for f in _siamese_batches():
        a, b = tower(torch.from_numpy(f["left"])), tower(torch.from_numpy(f["right"]))
        y = torch.from_numpy(f["same"])
        d = torch.sqrt(((a - b) ** 2).sum(-1) + 1e-6)
        loss = (y * d ** 2 + (1 - y) * torch.relu(1.0 - d) ** 2).mean() \
            + 0.5 * torch.relu(1 - (2 * y - 1) * (a * b).sum(-1)).mean()
        opt.zero_grad()
        loss.backward()
        got = net.gradients(f)
        for k in TOWER:
            np.testing.assert_allclose(got[k], t[k].grad.numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg=k)
        assert net.train_step(f) == pytest.approx(loss.item(), rel=1e-12)
        opt.step()
        for k, v in net.parameters().items():
            np.testing.assert_allclose(v, t[k].detach().numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg=k)


# *** ALBERT / the Universal Transformer: one post-norm layer applied again and again ***

ALBERT = """
block Layer(x, dim) {
  a = layer_norm(x + multi_head_attention(x, heads = 2))
  return layer_norm(a + (dense(a, 2 * dim) |> relu |> dense(dim)))
}

model Albert(dim = 8) {
  input x: float32[batch, 5, dim]
  h = Layer(x, dim)
  repeat 3 {
    h = Layer(h, dim, share = h)
  }
  output y = h
}
"""


def test_a_layer_shared_across_depth_has_one_set_of_weights():
    """The layer ends in layer_norm, so its result was filed under that layer_norm: each
    `share = h` ran the block under h.layer_norm(.layer_norm...) with fresh weights, 2,400
    parameters for 600 (PyTorch: one TransformerEncoderLayer-like module called 4 times)."""
    graph = nnlang.load(ALBERT).graph
    params = graph.params
    per_layer = (4 * 8 * 8 + 4 * 8) + 2 * 2 * 8 + (8 * 16 + 16) + (16 * 8 + 8)
    sizes = [int(np.prod(graph.node(nid).shape)) for nid in params.values()]
    assert sum(sizes) == per_layer == 600
    assert all(name.startswith("h.") and name.count(".") == 2 for name in params), sorted(params)
