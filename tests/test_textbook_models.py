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


# *** second round: models from Keras/PyTorch tutorials, each against a PyTorch twin ***
# Each case is the .nn source, its batch size, three batches and the same model written in
# torch on nnlang's initial weights (float64): 3 steps of SGD with momentum and of Adam agree
# in loss, gradients, weights (batch_norm's running statistics included) and metrics.

RESNET = """
block Basic(x, filters) {
  h = conv2d(x, filters, 3, padding = 1, use_bias = false) |> batch_norm |> relu
  h2 = conv2d(h, filters, 3, padding = 1, use_bias = false) |> batch_norm
  return relu(h2 + x)
}
block Down(x, filters) {
  h = conv2d(x, filters, 3, stride = 2, padding = 1, use_bias = false) |> batch_norm |> relu
  h2 = conv2d(h, filters, 3, padding = 1, use_bias = false) |> batch_norm
  s = conv2d(x, filters, 1, stride = 2, use_bias = false) |> batch_norm
  return relu(h2 + s)
}
model ResNet {
  input image: float32[batch, 3, 16, 16]
  input label: int32[batch]
  stem = conv2d(image, 4, 3, padding = 1, use_bias = false) |> batch_norm |> relu
  b1 = Basic(stem, 4)
  b2 = Down(b1, 8)                       # the projection skip, stride 2
  logits = global_avg_pool(b2) |> dense(5)
  output logits
  loss cross_entropy(logits, label)
  metric acc = accuracy(logits, label)
}
"""

TWO_HEADS = """
model TwoHeads {
  input image: float32[batch, 1, 8, 8]
  input meta: float32[batch, 5]
  input label: int32[batch]
  input price: float32[batch]
  f = conv2d(image, 3, 3) |> relu |> max_pool2d(2) |> flatten
  m = dense(meta, 6) |> relu
  h = concat(f, m, axis = -1) |> dense(10) |> relu
  logits = dense(h, 4)
  price_hat = dense(h, 1) |> squeeze(axis = -1)
  output logits
  output price_hat
  loss cls = cross_entropy(logits, label)
  loss reg = 0.25 * mse(price_hat, price)      # a loss weight is a factor: losses are summed
  metric acc = accuracy(logits, label)
  metric mae = mean(abs(price_hat - price))
}
"""

RECOMMENDER = """
model Recommender(users = 7, items = 9, dim = 3) {
  input user: int32[batch]
  input item: int32[batch]
  input rating: float32[batch]
  u = embedding(user, users, dim)
  v = embedding(item, items, dim)
  ub = embedding(user, users, 1) |> squeeze(axis = -1)
  ib = embedding(item, items, 1) |> squeeze(axis = -1)
  param mu: float32[] = zeros
  pred = sum(u * v, axis = -1) + ub + ib + mu
  output pred
  loss mse(pred, rating)
  metric rmse = sqrt(mse(pred, rating))
}
"""

SKIP_GRAM = """
model SkipGram(vocab = 11, dim = 4, negatives = 3) {
  input center: int32[batch]
  input context: int32[batch]
  input noise: int32[batch, negatives]
  c = embedding(center, vocab, dim)
  o = embedding(context, vocab, dim)
  n = embedding(noise, vocab, dim, share = o)      # the context table, [batch, negatives, dim]
  pos = sum(c * o, axis = -1)
  neg = sum(unsqueeze(c, axis = 1) * n, axis = -1)
  loss positive = bce_with_logits(pos, 0.0 * pos + 1.0)
  loss negative = mean(sum(softplus(neg), axis = -1))
}
"""

TRIPLET = """
block Tower(x) {
  return dense(x, 8) |> tanh |> dense(4)
}
model Triplet(margin = 0.5) {
  input anchor: float32[batch, 6]
  input pos: float32[batch, 6]
  input neg: float32[batch, 6]
  a = Tower(anchor)
  p = Tower(pos, share = a)
  n = Tower(neg, share = a)
  dp = sqrt(sum((a - p) ** 2, axis = -1) + 1e-9)
  dn = sqrt(sum((a - n) ** 2, axis = -1) + 1e-9)
  loss mean(maximum(dp - dn + margin, 0.0))
}
"""

CHAR_CNN = """
model CharCnn(chars = 12, classes = 3) {
  input text: int32[batch, 10]
  input label: int32[batch]
  e = embedding(text, chars, 5)
  c = conv1d(permute(e, [0, 2, 1]), 6, 3, padding = "same") |> relu
  logits = global_max_pool(c) |> dense(classes)
  output logits
  loss cross_entropy(logits, label)
}
"""

TAGGER = """
model Tagger(vocab = 10, tags = 4, units = 3) {
  symbol seq
  input tokens: int32[batch, seq]
  input tag: int32[batch, seq]
  real = tokens != 0
  h = gru(embedding(tokens, vocab, 5), units, return_sequences = true, bidirectional = true,
          mask = real)
  logits = dense(h, tags)
  output logits
  keep = cast(real, dtype = "float32")
  nll = -sum(log_softmax(logits) * one_hot(tag, tags), axis = -1)
  loss sum(nll * keep) / sum(keep)                 # the mean over real tokens only
  metric acc = sum(cast(argmax(logits, axis = -1) == tag, dtype = "float32") * keep) / sum(keep)
}
"""

ENCODER = """
model Encoder(vocab = 10, dim = 8, classes = 3) {
  symbol seq
  input tokens: int32[batch, seq]
  input label: int32[batch]
  mask = tokens != 0
  x = embedding(tokens, vocab, dim)
  p = positional_encoding(x, mask = mask, kind = "learned", max_len = 8)
  a = layer_norm(p + multi_head_attention(p, key_padding_mask = mask, heads = 2))
  h = layer_norm(a + (dense(a, 16) |> relu |> dense(dim)))
  keep = cast(mask, dtype = "float32") |> unsqueeze(axis = -1)
  pooled = sum(h * keep, axis = 1) / maximum(sum(keep, axis = 1), 1.0)
  logits = dense(pooled, classes)
  output logits
  loss cross_entropy(logits, label)
  metric acc = accuracy(logits, label)
}
"""


def _padded(rng, rows, lengths, vocab):
    """Token batches of the given lengths, one row padded at the front and one at the back."""
    out = []
    for n in lengths:
        tokens = rng.integers(1, vocab, (rows, n)).astype(np.int32)
        tokens[1, :2] = 0
        tokens[2, n - 1:] = 0
        out.append(tokens)
    return out


def _batches(name):
    rng = np.random.default_rng(0)

    def ints(hi, shape):
        return rng.integers(0, hi, shape).astype(np.int32)
    if name == "resnet":
        return [{"image": rng.normal(size=(4, 3, 16, 16)), "label": ints(5, 4)} for _ in range(3)]
    if name == "two_heads":
        return [{"image": rng.normal(size=(4, 1, 8, 8)), "meta": rng.normal(size=(4, 5)),
                 "label": ints(4, 4), "price": rng.normal(size=4)} for _ in range(3)]
    if name == "recommender":   # user 3 three times in a batch: its rows' gradients add up
        return [{"user": np.array([0, 3, 3, 6, 1, 3], np.int32), "item": ints(9, 6),
                 "rating": rng.normal(size=6)} for _ in range(3)]
    if name == "skip_gram":
        return [{"center": ints(11, 5), "context": ints(11, 5), "noise": ints(11, (5, 3))}
                for _ in range(3)]
    if name == "triplet":
        return [{k: rng.normal(size=(4, 6)) for k in ("anchor", "pos", "neg")} for _ in range(3)]
    if name == "char_cnn":
        return [{"text": ints(12, (4, 10)), "label": ints(3, 4)} for _ in range(3)]
    if name == "tagger":        # three lengths: one compiled model runs each
        return [{"tokens": t, "tag": ints(4, t.shape)} for t in _padded(rng, 3, (6, 4, 7), 10)]
    return [{"tokens": t, "label": ints(3, 3)} for t in _padded(rng, 3, (6, 4, 7), 10)]


def _torch_twin(name, torch, t, f):
    """(loss, {metric: value}) of the case's model in torch, on the weights `t` by nnlang name."""
    F = torch.nn.functional

    def bn(x, n):
        return F.batch_norm(x, t[f"{n}.running_mean"], t[f"{n}.running_var"], t[f"{n}.gamma"],
                            t[f"{n}.beta"], training=True, momentum=0.1, eps=1e-5)

    def dense(x, n):
        return x @ t[f"{n}.weight"] + t[f"{n}.bias"]

    def acc(logits, label, keep=None):
        hit = (logits.argmax(-1) == label).double()
        return (hit.mean() if keep is None else (hit * keep).sum() / keep.sum()).item()
    if name == "resnet":
        stem = F.relu(bn(F.conv2d(f["image"], t["conv2d.weight"], padding=1), "stem"))
        h = F.relu(bn(F.conv2d(stem, t["b1.conv2d.weight"], padding=1), "b1.h"))
        b1 = F.relu(bn(F.conv2d(h, t["b1.conv2d_1.weight"], padding=1), "b1.h2") + stem)
        h = F.relu(bn(F.conv2d(b1, t["b2.conv2d.weight"], stride=2, padding=1), "b2.h"))
        s = bn(F.conv2d(b1, t["b2.conv2d_2.weight"], stride=2), "b2.s")
        b2 = F.relu(bn(F.conv2d(h, t["b2.conv2d_1.weight"], padding=1), "b2.h2") + s)
        logits = dense(b2.mean((2, 3)), "logits")
        return F.cross_entropy(logits, f["label"]), {"acc": acc(logits, f["label"])}
    if name == "two_heads":
        x = F.max_pool2d(F.relu(F.conv2d(f["image"], t["f.weight"], t["f.bias"])), 2).flatten(1)
        h = F.relu(dense(torch.cat([x, F.relu(dense(f["meta"], "m"))], -1), "h"))
        logits, price = dense(h, "logits"), dense(h, "price_hat").squeeze(-1)
        cls, reg = F.cross_entropy(logits, f["label"]), 0.25 * F.mse_loss(price, f["price"])
        # NOTE: with several losses the step reports each by name besides their sum
        return cls + reg, {"cls": cls.item(), "reg": reg.item(), "acc": acc(logits, f["label"]),
                           "mae": (price - f["price"]).abs().mean().item()}
    if name == "recommender":
        user, item = f["user"], f["item"]
        pred = (t["u.weight"][user] * t["v.weight"][item]).sum(-1) + t["ub.weight"][user, 0] \
            + t["ib.weight"][item, 0] + t["mu"]
        loss = F.mse_loss(pred, f["rating"])
        return loss, {"rmse": loss.item() ** 0.5}
    if name == "skip_gram":     # word2vec: -log s(pos) - sum_k log s(-neg_k)
        c, o, n = t["c.weight"][f["center"]], t["o.weight"][f["context"]], t["o.weight"][f["noise"]]
        pos, neg = F.softplus(-(c * o).sum(-1)).mean(), \
            F.softplus((c[:, None] * n).sum(-1)).sum(-1).mean()
        # NOTE: two losses: the step reports each by name besides their sum
        return pos + neg, {"positive": pos.item(), "negative": neg.item()}
    if name == "triplet":
        def tower(x):
            return dense(torch.tanh(dense(x, "a.dense")), "a.dense_1")
        a, p, n = (tower(f[k]) for k in ("anchor", "pos", "neg"))
        dist = [torch.sqrt(((a - b) ** 2).sum(-1) + 1e-9) for b in (p, n)]
        return torch.clamp(dist[0] - dist[1] + 0.5, min=0).mean(), {}
    if name == "char_cnn":
        e = t["e.weight"][f["text"]].permute(0, 2, 1)
        c = F.relu(F.conv1d(e, t["c.weight"], t["c.bias"], padding=1))
        logits = dense(c.amax(-1), "logits")
        return F.cross_entropy(logits, f["label"]), {}
    real = f["tokens"] != 0
    keep = real.double()
    if name == "tagger":        # Keras GRU (gates z, r, h; reset after the recurrent GEMM)
        def gru(x, prefix, reverse):
            kernel, recurrent, bias = (t[f"h.{prefix}{w}"] for w in ("kernel", "recurrent", "bias"))
            u = recurrent.shape[0]
            h, out = torch.zeros(x.shape[0], u, dtype=x.dtype), [None] * x.shape[1]
            for s in (reversed(range(x.shape[1])) if reverse else range(x.shape[1])):
                xz, hz = x[:, s] @ kernel + bias[0], h @ recurrent + bias[1]
                z = torch.sigmoid(xz[:, :u] + hz[:, :u])
                r = torch.sigmoid(xz[:, u:2 * u] + hz[:, u:2 * u])
                new = z * h + (1 - z) * torch.tanh(xz[:, 2 * u:] + r * hz[:, 2 * u:])
                h = torch.where(real[:, s:s + 1], new, h)     # a pad keeps the state
                out[s] = h * keep[:, s:s + 1]
            return torch.stack(out, 1)
        x = t["embedding.weight"][f["tokens"]]
        logits = dense(torch.cat([gru(x, "", False), gru(x, "backward_", True)], -1), "logits")
        nll = F.cross_entropy(logits.transpose(1, 2), f["tag"], reduction="none")
        return (nll * keep).sum() / keep.sum(), {"acc": acc(logits, f["tag"], keep)}
    # encoder: post-norm layer, PyTorch's key_padding_mask as -1e9, positions from the first token
    x = t["x.weight"][f["tokens"]] + t["p.weight"][(real.long().cumsum(1) - 1).clamp(min=0)]
    b, n, d = x.shape
    q, k, v = (x @ t[f"multi_head_attention.w{w}"] + t[f"multi_head_attention.b{w}"]
               for w in "qkv")
    q, k, v = (y.reshape(b, n, 2, d // 2).transpose(1, 2) for y in (q, k, v))
    scores = (q @ k.transpose(-1, -2) / (d // 2) ** 0.5).masked_fill(~real[:, None, None], -1e9)
    att = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(b, n, d)
    a = F.layer_norm(x + att @ t["multi_head_attention.wo"] + t["multi_head_attention.bo"], (d,),
                     t["a.gamma"], t["a.beta"])
    h = F.layer_norm(a + dense(F.relu(dense(a, "dense")), "dense_1"), (d,), t["h.gamma"],
                     t["h.beta"])
    logits = dense((h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1), "logits")
    return F.cross_entropy(logits, f["label"]), {"acc": acc(logits, f["label"])}


TWINS = {"resnet": (RESNET, 4), "two_heads": (TWO_HEADS, 4), "recommender": (RECOMMENDER, 6),
         "skip_gram": (SKIP_GRAM, 5), "triplet": (TRIPLET, 4), "char_cnn": (CHAR_CNN, 4),
         "tagger": (TAGGER, 3), "encoder": (ENCODER, 3)}


def _twin_net(name, optimizer):
    source, batch = TWINS[name]
    train = f"\ntrain {source.split('model ')[1].split('(')[0].split(' ')[0]} " \
            f"{{\n  optimizer = {optimizer}\n  batch = {batch}\n}}\n"
    return nnlang.compile(source + train, dtype="float64", batch=batch, seed=1)


@pytest.mark.parametrize("optimizer", ["sgd(lr = 0.1, momentum = 0.9)", "adam(lr = 0.01)"])
@pytest.mark.parametrize("name", sorted(TWINS))
def test_tutorial_model_against_pytorch(name, optimizer):
    torch = pytest.importorskip("torch")
    net = _twin_net(name, optimizer)
    p = net.parameters()
    batches = _batches(name)
    trained = sorted(net.gradients(batches[0]))
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in trained) for k, v in p.items()}
    weights = [t[k] for k in trained]
    opt = (torch.optim.SGD(weights, lr=0.1, momentum=0.9) if optimizer.startswith("sgd")
           else torch.optim.Adam(weights, lr=0.01))
    for f in batches:
        tf = {k: torch.from_numpy(v).long() if v.dtype == np.int32 else torch.from_numpy(v)
              for k, v in f.items()}
        loss, metrics = _torch_twin(name, torch, t, tf)
        opt.zero_grad()
        loss.backward()
        got = net.gradients(f)
        assert sorted(got) == trained
        for k in trained:
            np.testing.assert_allclose(got[k], t[k].grad.numpy(), rtol=1e-9, atol=1e-11,
                                       err_msg=k)
        assert net.train_step(f) == pytest.approx(loss.item(), rel=1e-10)
        assert net.last_metrics == pytest.approx(metrics, rel=1e-10)
        opt.step()
        # NOTE: atol for Adam: a gradient that is zero in exact arithmetic (a key bias, the
        # last bias of a triplet tower) is rounding noise, which Adam scales up to ~lr
        for k, v in net.parameters().items():
            np.testing.assert_allclose(v, t[k].detach().numpy(), rtol=1e-9, atol=1e-9, err_msg=k)


def test_tutorial_models_parameter_counts():
    """Counted by hand, as Keras' summary would show them (batch_norm: gamma, beta and the two
    running statistics; a shared embedding or tower counted once)."""
    def bn(c):
        return 4 * c
    want = {
        "resnet": 4 * 3 * 9 + bn(4) + 2 * (4 * 4 * 9 + bn(4))
        + 8 * 4 * 9 + 8 * 8 * 9 + 8 * 4 + 3 * bn(8) + 8 * 5 + 5,
        "two_heads": 3 * 9 + 3 + 5 * 6 + 6 + (27 + 6) * 10 + 10 + 10 * 4 + 4 + 10 + 1,
        "recommender": 7 * 3 + 9 * 3 + 7 + 9 + 1,
        "skip_gram": 2 * 11 * 4,
        "triplet": 6 * 8 + 8 + 8 * 4 + 4,
        "char_cnn": 12 * 5 + 6 * 5 * 3 + 6 + 6 * 3 + 3,
        "tagger": 10 * 5 + 2 * (5 * 9 + 3 * 9 + 2 * 9) + 6 * 4 + 4,
        "encoder": 10 * 8 + 8 * 8 + 4 * (8 * 8 + 8) + 2 * 2 * 8 + 8 * 16 + 16 + 16 * 8 + 8
        + 8 * 3 + 3,
    }
    for name, (source, _) in TWINS.items():
        graph = nnlang.load(source).graph
        got = sum(int(np.prod(graph.node(nid).shape)) for nid in graph.params.values())
        assert got == want[name], name


def test_recommender_repeated_ids_numpy():
    """Matrix factorization: a user three times in one batch gets the sum of its rows'
    gradients, and the loss and metric are numpy's."""
    net = _twin_net("recommender", "sgd(lr = 0.1)")
    p, f = net.parameters(), _batches("recommender")[0]
    u, v = p["u.weight"][f["user"]], p["v.weight"][f["item"]]
    pred = (u * v).sum(-1) + p["ub.weight"][f["user"], 0] + p["ib.weight"][f["item"], 0] + p["mu"]
    err = 2 * (pred - f["rating"]) / len(pred)
    want = {k: np.zeros_like(p[k]) for k in ("u.weight", "v.weight", "ub.weight", "ib.weight")}
    np.add.at(want["u.weight"], f["user"], err[:, None] * v)
    np.add.at(want["v.weight"], f["item"], err[:, None] * u)
    np.add.at(want["ub.weight"], f["user"], err[:, None])
    np.add.at(want["ib.weight"], f["item"], err[:, None])
    got = net.gradients(f)
    for k, g in want.items():
        np.testing.assert_allclose(got[k], g, rtol=1e-10, atol=1e-14, err_msg=k)
    assert got["mu"] == pytest.approx(err.sum(), rel=1e-10)
    loss = np.mean((pred - f["rating"]) ** 2)
    assert net.evaluate(f) == pytest.approx({"mse": loss, "rmse": np.sqrt(loss)}, rel=1e-10)


def test_tagger_loss_ignores_the_pads():
    """The masked per-token mean: the tags at pads change neither the loss nor a gradient,
    and the loss is the mean over the real tokens (numpy log-softmax of the logits)."""
    net = _twin_net("tagger", "sgd(lr = 0.1)")
    f = _batches("tagger")[0]
    real = f["tokens"] != 0
    other = dict(f, tag=np.where(real, f["tag"], (f["tag"] + 1) % 4).astype(np.int32))
    base, moved = net.gradients(f), net.gradients(other)
    for k in base:
        np.testing.assert_array_equal(base[k], moved[k], err_msg=k)
    logits = net.forward(f)["logits"]
    z = logits - logits.max(-1, keepdims=True)
    nll = np.log(np.exp(z).sum(-1)) - np.take_along_axis(z, f["tag"][..., None], -1)[..., 0]
    assert net.evaluate(other)["loss"] == net.evaluate(f)["loss"] \
        == pytest.approx(nll[real].mean(), rel=1e-10)


@pytest.mark.parametrize("shared", ["s", "h"])
def test_share_names_any_result_of_a_return_state_call(shared):
    """`s2, h2 = gru(..., return_state = true, share = h)` was refused ("share = names 'h',
    which no layer with weights or block call made"): each result of such a call was made by
    the gru (docs/language.md), but only the packed value it cuts them from named the layer."""
    net = nnlang.compile(f"""model M {{
  input x: float32[batch, 4, 3]
  input x2: float32[batch, 4, 3]
  s, h = gru(x, 5, return_state = true, return_sequences = true)
  s2, h2 = gru(x2, 5, return_state = true, return_sequences = true, share = {shared})
  output s
  output h
  output s2
  output h2
}}""", backend="reference", dtype="float64", batch=2, seed=3)
    assert sorted(net.parameters()) == ["s.bias", "s.kernel", "s.recurrent"]
    x = np.random.default_rng(0).normal(size=(2, 4, 3))
    out = net.forward({"x": x, "x2": x})
    # NOTE: the same weights on the same input; weights of its own would give other values
    np.testing.assert_allclose(out["s2"], out["s"], rtol=1e-12)
    np.testing.assert_allclose(out["h2"], out["h"], rtol=1e-12)
    assert not np.allclose(out["s"], 0)


# *** third round: autoencoders, DenseNet, tied LM, pre-LN decoder, TCN, a multi-task run ***
# Each model as a student writes it from docs/language.md, 3 optimizer steps against a torch
# twin on nnlang's initial weights (float64), and a numpy check of the same model for CI.

def _mnist_rows(n):
    from nnlang.data.registry import MNIST_SAMPLE
    with np.load(MNIST_SAMPLE) as arrays:
        return (arrays["train_image"][:n].reshape(n, 784) / 255.0,
                arrays["train_label"][:n].astype(np.int32))


def _steps_against(net, torch, t, batches, loss_fn, opt, rtol=1e-9):
    """3 steps: nnlang's gradients, loss and weights after each step equal the torch twin's."""
    for f in batches:
        loss = loss_fn(f)
        opt.zero_grad()
        loss.backward()
        got = net.gradients(f)
        for k in got:
            np.testing.assert_allclose(got[k], t[k].grad.numpy(), rtol=rtol, atol=1e-11,
                                       err_msg=k)
        assert net.train_step(f) == pytest.approx(loss.item(), rel=1e-10)
        opt.step()
        for k, v in net.parameters().items():
            np.testing.assert_allclose(v, t[k].detach().numpy(), rtol=rtol, atol=1e-9,
                                       err_msg=k)


def _torch_weights(torch, net, frozen=()):
    return {k: torch.tensor(v, requires_grad=k not in frozen)
            for k, v in net.parameters().items()}


DAE = """
model Dae(hidden = 16) {
  input image: float32[batch, 784]
  input clean: float32[batch, 784]
  recon = dropout(image, 0.3) |> dense(hidden) |> relu |> dense(784) |> sigmoid
  output recon
  loss bce(recon, clean)                  # per pixel: the mean over batch and pixels
}
train Dae {
  optimizer = adam(lr = 0.01)
  batch = 8
}
"""


def _dae_batches():
    images, _ = _mnist_rows(24)
    return [{"image": images[i:i + 8], "clean": images[i:i + 8]} for i in (0, 8, 16)]


def test_denoising_autoencoder_against_pytorch():
    """The dropout mask of each step is read off d(loss)/d(image) (zero where a pixel was
    dropped, 1/0.7 times the noisy input's gradient elsewhere) and given to the twin."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net = nnlang.compile(DAE, dtype="float64", batch=8, seed=1)
    t = _torch_weights(torch, net)

    def loss_fn(f):
        keep = net.gradients(f, inputs="image")["image"] != 0
        assert 0.6 < keep.mean() < 0.8
        x = torch.from_numpy(f["image"])
        h = F.relu((x * torch.from_numpy(keep) / 0.7) @ t["dense.weight"] + t["dense.bias"])
        return F.binary_cross_entropy(torch.sigmoid(h @ t["recon.weight"] + t["recon.bias"]), x)
    _steps_against(net, torch, t, _dae_batches(), loss_fn,
                   torch.optim.Adam(list(t.values()), lr=0.01))


def test_denoising_autoencoder_evaluates_without_dropout_numpy():
    from tests import reference as ref
    net = nnlang.compile(DAE, dtype="float64", batch=8, seed=1)
    p, f = net.parameters(), _dae_batches()[0]
    recon = ref.sigmoid(np.maximum(f["image"] @ p["dense.weight"] + p["dense.bias"], 0)
                        @ p["recon.weight"] + p["recon.bias"])
    np.testing.assert_allclose(net.forward(f)["recon"], recon, rtol=1e-12)
    assert net.evaluate(f)["bce"] == pytest.approx(ref.bce(recon, f["clean"], eps=1e-7),
                                                   rel=1e-12)


CVAE = """
model Cvae(hidden = 16, latent = 2) {
  input image: float32[batch, 784]
  input label: int32[batch]
  y = one_hot(label, 10)
  h = dense(concat(image, y, axis = -1), hidden) |> relu
  mu = dense(h, latent)
  logvar = dense(h, latent)
  z = mu + exp(0.5 * logvar) * random_normal_like(mu)
  recon = dense(concat(z, y, axis = -1), hidden) |> relu |> dense(784) |> sigmoid
  output recon
  loss reconstruction = 784 * bce(recon, image)
  loss kl = mean(sum(-0.5 * (1 + logvar - mu * mu - exp(logvar)), axis = 1))
}
train Cvae {
  optimizer = adam(lr = 0.01)
  batch = 8
}
"""


def _cvae_batches():
    images, labels = _mnist_rows(24)
    return [{"image": images[i:i + 8], "label": labels[i:i + 8]} for i in (0, 8, 16)]


def test_conditional_vae_against_pytorch():
    """The label's one-hot goes into the encoder and, beside z, into the decoder; the twin
    draws the same noise (the step's key and the site's salt through nnlang's generator)."""
    torch = pytest.importorskip("torch")
    from nnlang.ops.random import _normal_impl
    F = torch.nn.functional
    net = nnlang.compile(CVAE, dtype="float64", batch=8, seed=1)
    salt, = (n.attrs["salt"] for n in net.graph("train") if n.op == "random_normal")
    t = _torch_weights(torch, net)

    def dense(x, n):
        return x @ t[f"{n}.weight"] + t[f"{n}.bias"]

    def loss_fn(f):
        key = np.int64(1 * 1_000_003 + net.step)    # the net's key for its next step
        eps = torch.from_numpy(_normal_impl(key, shape=[8, 2], salt=salt).astype(np.float64))
        x = torch.from_numpy(f["image"])
        y = F.one_hot(torch.from_numpy(f["label"]).long(), 10).double()
        h = F.relu(dense(torch.cat([x, y], -1), "h"))
        mu, logvar = dense(h, "mu"), dense(h, "logvar")
        z = mu + torch.exp(0.5 * logvar) * eps
        recon = torch.sigmoid(dense(F.relu(dense(torch.cat([z, y], -1), "dense")), "recon"))
        rec = 784 * F.binary_cross_entropy(recon, x)
        kl = (-0.5 * (1 + logvar - mu * mu - logvar.exp())).sum(1).mean()
        loss_fn.parts = {"reconstruction": rec.item(), "kl": kl.item()}
        return rec + kl
    _steps_against(net, torch, t, _cvae_batches(), loss_fn,
                   torch.optim.Adam(list(t.values()), lr=0.01))
    assert net.last_metrics == pytest.approx(loss_fn.parts, rel=1e-10)


def test_conditional_vae_evaluates_at_the_mean_numpy():
    """Evaluation decodes z = mu (no draw); the encoder takes 784 + 10 inputs and the decoder
    latent + 10."""
    from tests import reference as ref
    net = nnlang.compile(CVAE, dtype="float64", batch=8, seed=1)
    p, f = net.parameters(), _cvae_batches()[0]
    assert p["h.weight"].shape == (794, 16) and p["dense.weight"].shape == (12, 16)
    y = np.eye(10)[f["label"]]

    def dense(x, n):
        return x @ p[f"{n}.weight"] + p[f"{n}.bias"]
    h = np.maximum(dense(np.concatenate([f["image"], y], -1), "h"), 0)
    mu, logvar = dense(h, "mu"), dense(h, "logvar")
    recon = ref.sigmoid(dense(np.maximum(dense(np.concatenate([mu, y], -1), "dense"), 0),
                              "recon"))
    kl = np.mean(np.sum(-0.5 * (1 + logvar - mu ** 2 - np.exp(logvar)), axis=1))
    want = {"reconstruction": 784 * ref.bce(recon, f["image"], eps=1e-7), "kl": kl}
    assert net.evaluate(f) == pytest.approx({"loss": sum(want.values()), **want}, rel=1e-12)


DENSENET = """
block DenseLayer(x, growth) {
  return batch_norm(x) |> relu |> conv2d(growth, 3, padding = 1, use_bias = false)
}
block DenseBlock(x, growth) {
  x1 = concat(x, DenseLayer(x, growth), axis = 1)
  x2 = concat(x1, DenseLayer(x1, growth), axis = 1)
  return concat(x2, DenseLayer(x2, growth), axis = 1)
}
model DenseNet {
  input image: float32[batch, 2, 6, 6]
  input label: int32[batch]
  d = DenseBlock(image, 3)                                  # 2 + 3 * 3 = 11 channels
  t = conv2d(d, 4, 1, use_bias = false)
  # depthwise as single-channel convs joined (the same as conv2d(t, 4, 3, groups = 4))
  dw = concat(conv2d(t[:, 0:1], 1, 3, padding = 1), conv2d(t[:, 1:2], 1, 3, padding = 1),
              conv2d(t[:, 2:3], 1, 3, padding = 1), conv2d(t[:, 3:4], 1, 3, padding = 1),
              axis = 1)
  pw = conv2d(dw, 6, 1) |> batch_norm(momentum = 0.3) |> relu
  logits = global_avg_pool(pw) |> dense(3)
  output logits
  loss cross_entropy(logits, label)
}
train DenseNet {
  optimizer = sgd(lr = 0.1, momentum = 0.9)
  batch = 4
}
"""
DEPTHWISE = ("dw", "conv2d", "conv2d_1", "conv2d_2")     # channels 0..3


def _densenet_batches():
    rng = np.random.default_rng(0)
    return [{"image": rng.normal(size=(4, 2, 6, 6)),
             "label": rng.integers(0, 3, 4).astype(np.int32)} for _ in range(3)]


def test_densenet_block_and_depthwise_separable_conv_against_pytorch():
    """Concatenated feature maps, the depthwise conv as torch's groups = channels, and
    batch_norm: its running statistics after 3 steps (momentum 0.1 and 0.3, PyTorch's
    convention) and the evaluation forward that normalizes with them."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net = nnlang.compile(DENSENET, dtype="float64", batch=4, seed=1)
    t = _torch_weights(torch, net, frozen=[k for k in net.parameters() if ".running_" in k])

    def bn(x, n, training, momentum=0.1):
        return F.batch_norm(x, t[f"{n}.running_mean"], t[f"{n}.running_var"], t[f"{n}.gamma"],
                            t[f"{n}.beta"], training=training, momentum=momentum, eps=1e-5)

    def model(x, training=True):
        for n in ("d.DenseLayer", "d.DenseLayer_1", "d.DenseLayer_2"):
            h = F.relu(bn(x, f"{n}.batch_norm", training))
            x = torch.cat([x, F.conv2d(h, t[f"{n}.conv2d.weight"], padding=1)], 1)
        y = F.conv2d(F.conv2d(x, t["t.weight"]), torch.cat([t[f"{n}.weight"] for n in DEPTHWISE]),
                     torch.cat([t[f"{n}.bias"] for n in DEPTHWISE]), padding=1, groups=4)
        y = F.relu(bn(F.conv2d(y, t["conv2d_3.weight"], t["conv2d_3.bias"]), "pw", training, 0.3))
        return y.mean((2, 3)) @ t["logits.weight"] + t["logits.bias"]

    def loss_fn(f):
        return F.cross_entropy(model(torch.from_numpy(f["image"])),
                               torch.from_numpy(f["label"]).long())
    batches = _densenet_batches()
    weights = [v for v in t.values() if v.requires_grad]
    _steps_against(net, torch, t, batches, loss_fn,
                   torch.optim.SGD(weights, lr=0.1, momentum=0.9))
    with torch.no_grad():
        want = model(torch.from_numpy(batches[0]["image"]), training=False).numpy()
    np.testing.assert_allclose(net.forward(batches[0])["logits"], want, rtol=1e-9, atol=1e-12)


def test_densenet_depthwise_separable_parameter_count_numpy():
    """Keras' summary by hand: batch_norm 4 per channel, the 4 depthwise convs 9 + 1 each."""
    graph = nnlang.load(DENSENET).graph
    got = sum(int(np.prod(graph.node(nid).shape)) for nid in graph.params.values())
    dense_block = sum(4 * c + 3 * c * 9 for c in (2, 5, 8))
    assert got == dense_block + 11 * 4 + 4 * 10 + (4 * 6 + 6) + 4 * 6 + 6 * 3 + 3


TIED_LM = """
model TiedLm(vocab = 12, dim = 5) {
  input tokens: int32[batch, 7]
  input target: int32[batch, 7]
  emb = embedding(tokens, vocab, dim)
  h = lstm(emb, dim, return_sequences = true)
  logits = h @ transpose(emb.weight, perm = [1, 0])       # the output layer is the embedding
  output logits
  loss cross_entropy(logits, target)
}
train TiedLm {
  optimizer = adam(lr = 0.01)
  batch = 3
}
"""


def _next_token_batches(vocab: int, length: int):
    """Three batches of 3 random sequences: tokens and the next token at each place."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(3):
        s = rng.integers(0, vocab, (3, length + 1)).astype(np.int32)
        out.append({"tokens": s[:, :-1].copy(), "target": s[:, 1:].copy()})
    return out


def _lm_batches():
    return _next_token_batches(12, 7)


def test_tied_lstm_language_model_against_pytorch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net = nnlang.compile(TIED_LM, dtype="float64", batch=3, seed=1)
    t = _torch_weights(torch, net)
    assert sorted(t) == ["emb.weight", "h.bias", "h.kernel", "h.recurrent"]

    def loss_fn(f):   # a Keras LSTM (gates i, f, c, o) unrolled
        e = t["emb.weight"]
        x, u = e[torch.from_numpy(f["tokens"]).long()], 5
        h = c = torch.zeros(3, u, dtype=torch.float64)
        hs = []
        for s in range(7):
            z = x[:, s] @ t["h.kernel"] + h @ t["h.recurrent"] + t["h.bias"]
            i, f_, g, o = (z[:, k * u:(k + 1) * u] for k in range(4))
            c = torch.sigmoid(f_) * c + torch.sigmoid(i) * torch.tanh(g)
            o = torch.sigmoid(o)
            h = o * torch.tanh(c)
            hs.append(h)
        logits = torch.stack(hs, 1) @ e.T
        target = torch.from_numpy(f["target"]).long()
        return F.cross_entropy(logits.reshape(-1, 12), target.reshape(-1))
    _steps_against(net, torch, t, _lm_batches(), loss_fn,
                   torch.optim.Adam(list(t.values()), lr=0.01))


def test_tied_embedding_gradient_is_the_sum_of_both_uses_numpy():
    """The same model with an untied output matrix set to the embedding's transpose: the tied
    matrix's gradient is the embedding's gradient plus the output matrix's, transposed."""
    untied = TIED_LM.replace("h @ transpose(emb.weight, perm = [1, 0])", "h @ out") \
        .replace("  h = lstm", "  param out: float32[dim, vocab]\n  h = lstm")
    tied = nnlang.compile(TIED_LM, dtype="float64", batch=3, seed=1)
    apart = nnlang.compile(untied, dtype="float64", batch=3, seed=1)
    p = tied.parameters()
    apart.load_state_dict({**p, "out": p["emb.weight"].T.copy()})
    f = _lm_batches()[0]
    g, h = tied.gradients(f), apart.gradients(f)
    assert np.abs(h["out"]).max() > 1e-3 and np.abs(h["emb.weight"]).max() > 1e-6
    np.testing.assert_allclose(g["emb.weight"], h["emb.weight"] + h["out"].T, rtol=1e-10,
                               atol=1e-14)
    for k in ("h.kernel", "h.recurrent", "h.bias"):
        np.testing.assert_allclose(g[k], h[k], rtol=1e-10, atol=1e-14)


DECODER = """
model Decoder(vocab = 11, dim = 8, smoothing = 0.1) {
  input tokens: int32[batch, 6]
  input target: int32[batch, 6]
  x = embedding(tokens, vocab, dim) |> positional_encoding(kind = "learned")
  a = x + multi_head_attention(layer_norm(x), heads = 2, causal = true)      # pre-norm
  h = a + (layer_norm(a) |> dense(4 * dim) |> gelu(approximate = "APPROX") |> dense(dim))
  logits = layer_norm(h) |> dense(vocab)
  output logits
  # label smoothing written out: the smoothed one-hot as float targets (the same as
  # cross_entropy's label_smoothing option, which tests/ops/test_loss_options.py checks)
  soft = (1 - smoothing) * one_hot(target, vocab) + smoothing / vocab
  loss cross_entropy(logits, soft)
  metric acc = accuracy(logits, target)
}
train Decoder {
  optimizer = adamw(lr = 0.01)
  batch = 3
}
"""


def _decoder_batches():
    return _next_token_batches(11, 6)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_pre_norm_causal_decoder_against_pytorch(approximate):
    """torch's cross_entropy(label_smoothing = 0.1), F.gelu(approximate=...) and AdamW (decay
    0.01 on every weight); the two gelus differ by ~1e-5 in the loss, far above the tolerance."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net = nnlang.compile(DECODER.replace("APPROX", approximate), dtype="float64", batch=3, seed=1)
    t = _torch_weights(torch, net)

    def ln(x, n):
        return F.layer_norm(x, (8,), t[f"{n}.gamma"], t[f"{n}.beta"], 1e-5)

    def dense(x, n):
        return x @ t[f"{n}.weight"] + t[f"{n}.bias"]

    def loss_fn(f):
        tokens, target = (torch.from_numpy(f[k]).long() for k in ("tokens", "target"))
        x = t["embedding.weight"][tokens] + t["x.weight"]
        y = ln(x, "layer_norm")
        q, k, v = ((y @ t[f"a.w{w}"] + t[f"a.b{w}"]).reshape(3, 6, 2, 4).transpose(1, 2)
                   for w in "qkv")
        future = torch.triu(torch.full((6, 6), -1e9, dtype=torch.float64), 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / 2.0 + future, -1) @ v
        a = x + att.transpose(1, 2).reshape(3, 6, 8) @ t["a.wo"] + t["a.bo"]
        h = a + dense(F.gelu(dense(ln(a, "layer_norm_1"), "dense"), approximate=approximate), "h")
        logits = dense(ln(h, "layer_norm_2"), "logits")
        loss_fn.acc = (logits.argmax(-1) == target).double().mean().item()
        return F.cross_entropy(logits.reshape(-1, 11), target.reshape(-1), label_smoothing=0.1)
    _steps_against(net, torch, t, _decoder_batches(), loss_fn,
                   torch.optim.AdamW(list(t.values()), lr=0.01, weight_decay=0.01), rtol=1e-8)
    assert net.last_metrics == pytest.approx({"acc": loss_fn.acc})


def test_decoder_smoothed_loss_and_causality_numpy():
    """The smoothed targets give (1 - e) * nll + e * mean over classes of -log p (torch's
    label_smoothing); a later token changes no earlier position's logits."""
    from tests import reference as ref
    net = nnlang.compile(DECODER.replace("APPROX", "tanh"), dtype="float64", batch=3, seed=1)
    f = _decoder_batches()[0]
    logits = net.forward(f)["logits"]
    logp = ref.log_softmax(logits)
    nll = -np.take_along_axis(logp, f["target"][..., None], -1).mean()
    assert net.evaluate(f)["cross_entropy"] == pytest.approx(
        0.9 * nll + 0.1 * -logp.mean(), rel=1e-12)
    later = dict(f, tokens=f["tokens"].copy())
    later["tokens"][:, 4:] = (later["tokens"][:, 4:] + 1) % 11
    moved = net.forward(later)["logits"]
    np.testing.assert_allclose(moved[:, :4], logits[:, :4], rtol=1e-12, atol=1e-14)
    assert np.abs(moved[:, 4:] - logits[:, 4:]).max() > 1e-3


TCN = """
block Causal(x, filters, dilation) {
  # causal: (kernel - 1) * dilation zeros before the sequence, none after
  h = conv1d(x, filters, 3, dilation = dilation, padding = [2 * dilation, 0]) |> relu
  return h + x
}
model Tcn(classes = 3) {
  input x: float32[batch, 2, 12]
  input label: int32[batch]
  h0 = conv1d(x, 4, 1)
  h1 = Causal(h0, 4, 1)
  h2 = Causal(h1, 4, 2)
  h3 = Causal(h2, 4, 4)
  s = permute(h3, [0, 2, 1])                                # [batch, time, 4]
  w = dense(s, 1) |> squeeze(axis = -1) |> softmax        # attention weights over time
  pooled = sum(s * unsqueeze(w, axis = -1), axis = 1)
  logits = dense(pooled, classes)
  output logits
  output h3
  output w
  loss cross_entropy(logits, label)
}
train Tcn {
  optimizer = sgd(lr = 0.1, momentum = 0.9, nesterov = true)
  batch = 4
}
"""


def _tcn_batches():
    rng = np.random.default_rng(0)
    return [{"x": rng.normal(size=(4, 2, 12)), "label": rng.integers(0, 3, 4).astype(np.int32)}
            for _ in range(3)]


def test_dilated_causal_tcn_with_attention_pooling_against_pytorch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net = nnlang.compile(TCN, dtype="float64", batch=4, seed=1)
    t = _torch_weights(torch, net)

    def loss_fn(f):
        h = F.conv1d(torch.from_numpy(f["x"]), t["h0.weight"], t["h0.bias"])
        for n, d in (("h1", 1), ("h2", 2), ("h3", 4)):
            h = F.relu(F.conv1d(F.pad(h, (2 * d, 0)), t[f"{n}.h.weight"], t[f"{n}.h.bias"],
                                dilation=d)) + h
        s = h.transpose(1, 2)
        w = torch.softmax((s @ t["w.weight"] + t["w.bias"]).squeeze(-1), -1)
        logits = (s * w[..., None]).sum(1) @ t["logits.weight"] + t["logits.bias"]
        return F.cross_entropy(logits, torch.from_numpy(f["label"]).long())
    _steps_against(net, torch, t, _tcn_batches(), loss_fn,
                   torch.optim.SGD(list(t.values()), lr=0.1, momentum=0.9, nesterov=True))


def test_tcn_is_causal_and_pools_by_its_weights_numpy():
    """A change at step 9 leaves the features of steps 0..8 as they were; the pooling weights
    sum to 1 over time and the head reads their weighted sum."""
    net = nnlang.compile(TCN, dtype="float64", batch=4, seed=1)
    p, f = net.parameters(), _tcn_batches()[0]
    out = net.forward(f)
    later = dict(f, x=f["x"].copy())
    later["x"][:, :, 9] += 1.0
    moved = net.forward(later)["h3"]
    np.testing.assert_allclose(moved[:, :, :9], out["h3"][:, :, :9], rtol=1e-12, atol=1e-14)
    assert np.abs(moved[:, :, 9:] - out["h3"][:, :, 9:]).max() > 1e-6
    np.testing.assert_allclose(out["w"].sum(-1), 1.0, rtol=1e-12)
    pooled = np.einsum("bct,bt->bc", out["h3"], out["w"])
    np.testing.assert_allclose(out["logits"], pooled @ p["logits.weight"] + p["logits.bias"],
                               rtol=1e-12)


MULTI_TASK = """
model MultiTask(hidden = 8, w_reg = 0.3) {
  input x: float32[batch, 6]
  input label: int32[batch]
  input value: float32[batch]
  h = dense(x, hidden) |> tanh
  logits = dense(h, 3)
  pred = dense(h, 1) |> squeeze(axis = -1)
  output logits
  output pred
  loss cls = 0.7 * cross_entropy(logits, label)
  loss reg = w_reg * mse(pred, value)
  metric acc = accuracy(logits, label)
  metric mae = mean(abs(pred - value))
}
train MultiTask {
  data = "mt.npz"
  optimizer = adam(lr = 0.05)
  batch = 16
  epochs = 3
}
"""


def _multi_task_run(tmp_path):
    """`nnlang train` on a 16-row .npz, one full batch a step (so the data order cannot
    matter), the regression weight set from the command line; metrics.csv's rows."""
    import csv

    from tests.faults.conftest import cli
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype(np.float32)
    data = {"x": x, "label": rng.integers(0, 3, 16).astype(np.int32),
            "value": (2 * x[:, 0] + 0.1 * rng.normal(size=16)).astype(np.float32)}
    np.savez(tmp_path / "mt.npz", **data)
    (tmp_path / "mt.nn").write_text(MULTI_TASK)
    cli("train", "mt.nn", "--out", "run", "--set", "w_reg=0.4", code=0, cwd=tmp_path)
    with open(tmp_path / "run" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    start = nnlang.compile(MULTI_TASK.replace("w_reg = 0.3", "w_reg = 0.4"), seed=0)
    return data, rows, start.parameters()


def _multi_task_numpy(p, d):
    from tests import reference as ref
    h = np.tanh(d["x"] @ p["h.weight"] + p["h.bias"])
    logits = h @ p["logits.weight"] + p["logits.bias"]
    pred = (h @ p["pred.weight"] + p["pred.bias"])[:, 0]
    cls, reg = 0.7 * ref.cross_entropy(logits, d["label"]), 0.4 * np.mean((pred - d["value"]) ** 2)
    return {"train_loss": cls + reg, "train_cls": cls, "train_reg": reg,
            "train_acc": np.mean(logits.argmax(-1) == d["label"]),
            "train_mae": np.mean(np.abs(pred - d["value"]))}


def test_multi_task_train_reports_each_weighted_loss_numpy(tmp_path):
    """The first epoch's row is the initial weights' losses and metrics, each loss with its
    weight (the one --set gave), and the total their sum, on every row."""
    data, rows, p = _multi_task_run(tmp_path)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    want = _multi_task_numpy(p, data)
    assert {k: float(rows[0][k]) for k in want} == pytest.approx(want, rel=1e-5)
    for r in rows:
        assert float(r["train_loss"]) == pytest.approx(
            float(r["train_cls"]) + float(r["train_reg"]), rel=1e-6)


def test_multi_task_train_against_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    data, rows, p = _multi_task_run(tmp_path)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    opt = torch.optim.Adam(list(t.values()), lr=0.05)
    x, label, value = (torch.from_numpy(data[k]) for k in ("x", "label", "value"))
    for row in rows:
        h = torch.tanh(x @ t["h.weight"] + t["h.bias"])
        logits = h @ t["logits.weight"] + t["logits.bias"]
        pred = (h @ t["pred.weight"] + t["pred.bias"]).squeeze(-1)
        cls, reg = 0.7 * F.cross_entropy(logits, label.long()), 0.4 * F.mse_loss(pred, value)
        want = {"train_loss": (cls + reg).item(), "train_cls": cls.item(),
                "train_reg": reg.item(), "train_mae": (pred - value).abs().mean().item(),
                "train_acc": (logits.argmax(-1) == label).float().mean().item()}
        assert {k: float(row[k]) for k in want} == pytest.approx(want, rel=2e-5)
        opt.zero_grad()
        (cls + reg).backward()
        opt.step()
    with np.load(tmp_path / "run" / "checkpoint.npz") as saved:
        for k, v in t.items():
            np.testing.assert_allclose(saved[f"state/{k}"], v.detach().numpy(), rtol=1e-4,
                                       atol=1e-6, err_msg=k)


def test_cross_entropy_ignore_index_is_torchs_masked_mean():
    """PyTorch's cross_entropy(..., ignore_index = pad) was refused with a hint to mask the
    per-row losses by hand; the option now gives that masked mean, which is torch's loss
    (numpy here), the same as the hand-written one, with the same gradients."""
    from tests import reference as ref

    def _only(losses):
        (value,) = losses.values()
        return value
    head = """
model Lm(vocab = 11) {
  input tokens: int32[batch, 6]
  input target: int32[batch, 6]
  logits = embedding(tokens, vocab, 8) |> dense(vocab)
  output logits
"""
    net = nnlang.compile(head + "  loss cross_entropy(logits, target, ignore_index = 0)\n}\n",
                         dtype="float64", batch=3, seed=1)
    by_hand = nnlang.compile(head + """
  nll = -sum(log_softmax(logits) * one_hot(target, vocab), axis = -1)
  keep = cast(target != 0, dtype = "float32")
  loss sum(nll * keep) / sum(keep)
}
""", dtype="float64", batch=3, seed=1)
    f = _decoder_batches()[0]
    f["target"][0, :3] = 0                                     # padding to ignore
    logp = ref.log_softmax(net.forward(f)["logits"])
    nll = -np.take_along_axis(logp, f["target"][..., None], -1)[..., 0]
    real = f["target"] != 0
    assert _only(net.evaluate(f)) == pytest.approx(nll[real].mean(), rel=1e-12)
    assert _only(by_hand.evaluate(f)) == pytest.approx(nll[real].mean(), rel=1e-12)
    want, hand = net.gradients(f), by_hand.gradients(f)
    for k in want:
        np.testing.assert_allclose(want[k], hand[k], rtol=1e-10, atol=1e-14, err_msg=k)
    torch = pytest.importorskip("torch")
    want = torch.nn.functional.cross_entropy(
        torch.from_numpy(net.forward(f)["logits"]).reshape(-1, 11),
        torch.from_numpy(f["target"]).long().reshape(-1), ignore_index=0)
    assert _only(net.evaluate(f)) == pytest.approx(want.item(), rel=1e-12)


# *** an imbalanced classifier: class weights, PyTorch's default ignore_index = -100 and a
# multi-label head with pos_weight, trained by `nnlang train` ***

IMBALANCED = """
model Imbalanced(hidden = 8) {
  input x: float32[batch, 5]
  input label: int32[batch]
  input tags: float32[batch, 2]
  h = dense(x, hidden) |> relu
  logits = dense(h, 3)
  tag_logits = dense(h, 2)
  output logits
  loss cls = cross_entropy(logits, label, weight = [0.2, 1.0, 5.0], ignore_index = -100)
  loss tag = bce_with_logits(tag_logits, tags, pos_weight = [4.0, 0.5])
}
train Imbalanced {
  data = "imb.npz"
  optimizer = adam(lr = 0.05)
  batch = 16
  epochs = 3
}
"""
IMBALANCED_WEIGHT, IMBALANCED_POS = np.array([0.2, 1.0, 5.0]), np.array([4.0, 0.5])


def _imbalanced_run(tmp_path):
    """`nnlang train` on 16 rows, mostly class 0, two of them labelled -100 (unlabelled, left
    out as PyTorch's default ignore_index does); one full batch a step."""
    import csv

    from tests.faults.conftest import cli
    rng = np.random.default_rng(0)
    label = rng.choice([0, 0, 0, 0, 0, 1, 1, 2], 16).astype(np.int32)
    label[[3, 10]] = -100
    data = {"x": rng.normal(size=(16, 5)).astype(np.float32), "label": label,
            "tags": (rng.random((16, 2)) < [0.2, 0.7]).astype(np.float32)}
    np.savez(tmp_path / "imb.npz", **data)
    (tmp_path / "imb.nn").write_text(IMBALANCED)
    cli("train", "imb.nn", "--out", "run", code=0, cwd=tmp_path)
    with open(tmp_path / "run" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return data, rows, nnlang.compile(IMBALANCED, seed=0).parameters()


def test_imbalanced_classifier_train_reports_weighted_losses_numpy(tmp_path):
    """ignore_index = -100 (PyTorch's default, outside the classes) was refused by the check
    of fed ids, before training (and in evaluate): "the id -100 is outside the 3 values". The
    first row's losses are the initial weights', by numpy: sum(w[y] nll) / sum(w[y]) over the
    labelled rows, and PyTorch's pos_weight form of the binary cross-entropy."""
    from tests import reference as ref
    data, rows, p = _imbalanced_run(tmp_path)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    h = np.maximum(data["x"] @ p["h.weight"] + p["h.bias"], 0)
    logp = ref.log_softmax(h @ p["logits.weight"] + p["logits.bias"])
    kept = data["label"] != -100
    y = data["label"][kept]
    w = IMBALANCED_WEIGHT[y]
    cls = -np.sum(w * logp[kept, y]) / w.sum()
    z, t = h @ p["tag_logits.weight"] + p["tag_logits.bias"], data["tags"]
    tag = -np.mean(IMBALANCED_POS * t * np.log(ref.sigmoid(z)) + (1 - t) * np.log(ref.sigmoid(-z)))
    assert float(rows[0]["train_cls"]) == pytest.approx(cls, rel=1e-5)
    assert float(rows[0]["train_tag"]) == pytest.approx(tag, rel=1e-5)
    net = nnlang.compile(IMBALANCED, dtype="float64", batch=16, seed=0)
    assert net.evaluate(data)["cls"] == pytest.approx(cls, rel=1e-5)


def test_ignored_id_is_refused_at_a_use_that_does_not_skip_it():
    """Labels that also feed an embedding: -100 would index outside its table, so it is an
    error there, and the error points at the embedding, not at the cross_entropy that skips
    it (the first op found with the id was named, whichever it was)."""
    src = """
model M {
  input x: float32[batch, 3]
  input y: int32[batch]
  loss cross_entropy(x, y, ignore_index = -100)
  loss e = mean(embedding(y, 3, 2))
}
"""
    net = nnlang.compile(src, dtype="float64", batch=2)
    with pytest.raises(nnlang.NNError) as err:
        net.evaluate({"x": np.ones((2, 3)), "y": np.array([1, -100], np.int32)})
    assert "the id -100, outside the 3 values" in err.value.message
    assert "embedding(y, 3, 2)" in str(err.value)


def test_imbalanced_classifier_train_against_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    data, rows, p = _imbalanced_run(tmp_path)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    opt = torch.optim.Adam(list(t.values()), lr=0.05)
    x, label, tags = (torch.from_numpy(data[k]) for k in ("x", "label", "tags"))
    for row in rows:
        h = F.relu(x @ t["h.weight"] + t["h.bias"])
        cls = F.cross_entropy(h @ t["logits.weight"] + t["logits.bias"], label.long(),
                              weight=torch.tensor(IMBALANCED_WEIGHT, dtype=torch.float32))
        tag = F.binary_cross_entropy_with_logits(
            h @ t["tag_logits.weight"] + t["tag_logits.bias"], tags,
            pos_weight=torch.tensor(IMBALANCED_POS, dtype=torch.float32))
        want = {"train_loss": (cls + tag).item(), "train_cls": cls.item(), "train_tag": tag.item()}
        assert {k: float(row[k]) for k in want} == pytest.approx(want, rel=2e-5)
        opt.zero_grad()
        (cls + tag).backward()
        opt.step()
    with np.load(tmp_path / "run" / "checkpoint.npz") as saved:
        for k, v in t.items():
            np.testing.assert_allclose(saved[f"state/{k}"], v.detach().numpy(), rtol=1e-4,
                                       atol=1e-6, err_msg=k)


# *** the newest options in textbook blocks: grouped and depthwise convs, causal conv1d,
# kl_div(log_target), huber, label smoothing; each against a PyTorch twin, trained 3 steps ***

def _bn(F, t, x, n, training=True):
    return F.batch_norm(x, t[f"{n}.running_mean"], t[f"{n}.running_var"], t[f"{n}.gamma"],
                        t[f"{n}.beta"], training=training, momentum=0.1, eps=1e-5)


def _frozen_stats(net):
    return [k for k in net.parameters() if ".running_" in k]


MOBILENET = {
    "channels_first": """
model MobileNet {
  input image: float32[batch, 4, 8, 8]
  input label: int32[batch]
  dw = conv2d(image, 4, 3, stride = 2, padding = 1, groups = 4, use_bias = false)
  h = batch_norm(dw) |> clip(0, 6)                      # relu6
  pw = conv2d(h, 8, 1, use_bias = false) |> batch_norm |> clip(0, 6)
  logits = global_avg_pool(pw) |> dense(3)
  output logits
  loss cross_entropy(logits, label)
}
train MobileNet {
  optimizer = sgd(lr = 0.1, momentum = 0.9)
  batch = 4
}
""",
    "channels_last": """
model MobileNet {
  input image: float32[batch, 8, 8, 4]
  input label: int32[batch]
  dw = conv2d(image, 4, 3, stride = 2, padding = 1, groups = 4, use_bias = false,
              channels_last = true)
  h = permute(dw, [0, 3, 1, 2]) |> batch_norm |> clip(0, 6) |> permute([0, 2, 3, 1])
  pw = conv2d(h, 8, 1, use_bias = false, channels_last = true) |> permute([0, 3, 1, 2])
       |> batch_norm |> clip(0, 6)
  logits = global_avg_pool(pw) |> dense(3)
  output logits
  loss cross_entropy(logits, label)
}
train MobileNet {
  optimizer = sgd(lr = 0.1, momentum = 0.9)
  batch = 4
}
"""}


def _mobilenet_batches(layout):
    rng = np.random.default_rng(0)
    out = [{"image": 3 * rng.normal(size=(4, 4, 8, 8)),
            "label": rng.integers(0, 3, 4).astype(np.int32)} for _ in range(3)]
    if layout == "channels_last":
        for f in out:
            f["image"] = np.ascontiguousarray(f["image"].transpose(0, 2, 3, 1))
    return out


@pytest.mark.parametrize("layout", sorted(MOBILENET))
def test_mobilenet_v1_block_against_pytorch(layout):
    """Depthwise 3x3 stride 2 (groups = channels), batch_norm, relu6 as clip, pointwise 1x1:
    torch's groups = 4 conv, both layouts, 3 SGD steps and the evaluation forward."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net = nnlang.compile(MOBILENET[layout], dtype="float64", batch=4, seed=1)
    t = _torch_weights(torch, net, frozen=_frozen_stats(net))

    def model(x, training=True):
        if layout == "channels_last":
            x = x.permute(0, 3, 1, 2)
        h = F.conv2d(x, t["dw.weight"], stride=2, padding=1, groups=4)
        h = torch.clamp(_bn(F, t, h, "h", training), 0, 6)
        h = torch.clamp(_bn(F, t, F.conv2d(h, t["conv2d.weight"]), "pw", training), 0, 6)
        return h.mean((2, 3)) @ t["logits.weight"] + t["logits.bias"]

    def loss_fn(f):
        return F.cross_entropy(model(torch.from_numpy(f["image"])),
                               torch.from_numpy(f["label"]).long())
    batches = _mobilenet_batches(layout)
    _steps_against(net, torch, t, batches, loss_fn,
                   torch.optim.SGD([v for v in t.values() if v.requires_grad], lr=0.1,
                                   momentum=0.9))
    with torch.no_grad():
        want = model(torch.from_numpy(batches[0]["image"]), training=False).numpy()
    np.testing.assert_allclose(net.forward(batches[0])["logits"], want, rtol=1e-9, atol=1e-12)


def test_mobilenet_block_layouts_agree_numpy():
    """The channels_last block on the transposed image is the channels-first block, weights
    for weights; the depthwise conv holds 9 weights per channel (Keras' DepthwiseConv2D)."""
    first = nnlang.compile(MOBILENET["channels_first"], dtype="float64", batch=4, seed=1)
    last = nnlang.compile(MOBILENET["channels_last"], dtype="float64", batch=4, seed=2)
    p = first.parameters()
    assert sorted(p) == sorted(last.parameters())
    assert p["dw.weight"].shape == (4, 1, 3, 3)
    assert sum(v.size for k, v in p.items() if ".running_" not in k) == \
        4 * 9 + 2 * 4 + 4 * 8 + 2 * 8 + 8 * 3 + 3
    last.load_state_dict(p)
    f_first = _mobilenet_batches("channels_first")[0]
    f_last = _mobilenet_batches("channels_last")[0]
    np.testing.assert_allclose(last.forward(f_last)["logits"], first.forward(f_first)["logits"],
                               rtol=1e-12, atol=1e-14)
    assert last.train_step(f_last) == pytest.approx(first.train_step(f_first), rel=1e-12)


RESNEXT = """
block Bottleneck(x, width = 8, out = 8, cardinality = 4) {
  a = conv2d(x, width, 1, use_bias = false) |> batch_norm |> relu
  g = conv2d(a, width, 3, padding = 1, groups = cardinality, use_bias = false)
      |> batch_norm |> relu
  c = conv2d(g, out, 1, use_bias = false) |> batch_norm
  return relu(c + x)
}
model ResNeXt {
  input image: float32[batch, 8, 5, 5]
  input label: int32[batch]
  b = Bottleneck(image)
  logits = global_avg_pool(b) |> dense(3)
  output logits
  loss cross_entropy(logits, label)
}
train ResNeXt {
  optimizer = sgd(lr = 0.1, momentum = 0.9, weight_decay = 0.01)
  batch = 4
}
"""


def _resnext_batches():
    rng = np.random.default_rng(0)
    return [{"image": rng.normal(size=(4, 8, 5, 5)),
             "label": rng.integers(0, 3, 4).astype(np.int32)} for _ in range(3)]


def test_resnext_bottleneck_against_pytorch():
    """1x1, grouped 3x3 (cardinality 4), 1x1, batch_norm and the identity shortcut, with SGD's
    momentum and weight decay (on every weight, gamma and beta too, as torch's SGD)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net = nnlang.compile(RESNEXT, dtype="float64", batch=4, seed=1)
    t = _torch_weights(torch, net, frozen=_frozen_stats(net))

    def model(x, training=True):
        a = F.relu(_bn(F, t, F.conv2d(x, t["b.conv2d.weight"]), "b.a", training))
        g = F.conv2d(a, t["b.conv2d_1.weight"], padding=1, groups=4)
        g = F.relu(_bn(F, t, g, "b.g", training))
        c = _bn(F, t, F.conv2d(g, t["b.conv2d_2.weight"]), "b.c", training)
        return F.relu(c + x).mean((2, 3)) @ t["logits.weight"] + t["logits.bias"]

    def loss_fn(f):
        return F.cross_entropy(model(torch.from_numpy(f["image"])),
                               torch.from_numpy(f["label"]).long())
    batches = _resnext_batches()
    _steps_against(net, torch, t, batches, loss_fn,
                   torch.optim.SGD([v for v in t.values() if v.requires_grad], lr=0.1,
                                   momentum=0.9, weight_decay=0.01))
    with torch.no_grad():
        want = model(torch.from_numpy(batches[0]["image"]), training=False).numpy()
    np.testing.assert_allclose(net.forward(batches[0])["logits"], want, rtol=1e-9, atol=1e-12)


def test_resnext_grouped_conv_parameters_and_forward_numpy():
    """The grouped 3x3 holds width * (width / 4) * 9 weights, a quarter of a dense 3x3's, and
    evaluates (running statistics 0 and 1 at the start) as 4 convs of 2 channels each, numpy."""
    net = nnlang.compile(RESNEXT, dtype="float64", batch=4, seed=1)
    p = net.parameters()
    assert p["b.conv2d_1.weight"].shape == (8, 2, 3, 3)
    assert sum(v.size for k, v in p.items() if ".running_" not in k) == \
        64 + 8 * 2 * 9 + 64 + 3 * 16 + 8 * 3 + 3
    x = _resnext_batches()[0]["image"]

    def conv(h, w, pad=0):
        h = np.pad(h, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        k = w.shape[-1]
        win = np.lib.stride_tricks.sliding_window_view(h, (k, k), axis=(2, 3))
        return np.einsum("bchwij,ocij->bohw", win, w)

    def bn(h, n):   # evaluation: (h - 0) / sqrt(1 + eps) * gamma + beta
        return (h / np.sqrt(1 + 1e-5) * p[f"{n}.gamma"][:, None, None]
                + p[f"{n}.beta"][:, None, None])
    a = np.maximum(bn(conv(x, p["b.conv2d.weight"]), "b.a"), 0)
    w = p["b.conv2d_1.weight"]
    g = np.concatenate([conv(a[:, 2 * i:2 * i + 2], w[2 * i:2 * i + 2], pad=1)
                        for i in range(4)], axis=1)
    c = bn(conv(np.maximum(bn(g, "b.g"), 0), p["b.conv2d_2.weight"]), "b.c")
    logits = np.maximum(c + x, 0).mean((2, 3)) @ p["logits.weight"] + p["logits.bias"]
    np.testing.assert_allclose(net.forward({"image": x})["logits"], logits, rtol=1e-10)


DISTILL = """
block Teacher(x) {
  return dense(x, 16) |> relu |> dense(5)
}
model Distill(T = 4.0, alpha = 0.7) {
  input x: float32[batch, 6]
  input label: int32[batch]
  teacher = Teacher(x, trainable = false)
  student = dense(x, 5)
  output student
  loss soft = alpha * T ** 2 * kl_div(log_softmax(student / T), log_softmax(teacher / T),
                                      log_target = true)
  loss hard = (1 - alpha) * cross_entropy(student, label, label_smoothing = 0.1)
}
train Distill {
  optimizer = adam(lr = 0.05)
  batch = 4
}
"""
TEACHER = ("teacher.dense.weight", "teacher.dense.bias", "teacher.dense_1.weight",
           "teacher.dense_1.bias")


def _distill_batches():
    rng = np.random.default_rng(0)
    return [{"x": rng.normal(size=(4, 6)), "label": rng.integers(0, 5, 4).astype(np.int32)}
            for _ in range(3)]


def _distill_losses(p, f):
    """Hinton's recipe in numpy: T^2 KL(teacher_T || student_T) per example, and the
    smoothed cross-entropy ((1 - e) nll + e mean(-logp)) on the hard labels."""
    from tests import reference as ref
    teacher = np.maximum(f["x"] @ p[TEACHER[0]] + p[TEACHER[1]], 0) @ p[TEACHER[2]] + p[TEACHER[3]]
    student = f["x"] @ p["student.weight"] + p["student.bias"]
    s, t = ref.log_softmax(student / 4), ref.log_softmax(teacher / 4)
    soft = 0.7 * 16 * np.sum(np.exp(t) * (t - s)) / len(t)
    logp = ref.log_softmax(student)
    rows = 0.9 * -logp[np.arange(4), f["label"]] + 0.1 * -logp.mean(-1)
    return {"soft": soft, "hard": 0.3 * rows.mean()}


def test_distillation_frozen_teacher_numpy():
    """The teacher (trainable = false) gets no gradient and keeps its weights; the soft and
    hard losses are numpy's, before and after a step."""
    net = nnlang.compile(DISTILL, dtype="float64", batch=4, seed=1)
    start = net.parameters()
    assert sorted(net.gradients(_distill_batches()[0])) == ["student.bias", "student.weight"]
    for f in _distill_batches():
        p = net.parameters()
        want = _distill_losses(p, f)
        assert net.evaluate(f) == pytest.approx({"loss": sum(want.values()), **want}, rel=1e-12)
        net.train_step(f)
    for k in TEACHER:
        np.testing.assert_array_equal(net.parameters()[k], start[k])
    assert not np.allclose(net.parameters()["student.weight"], start["student.weight"])


def test_distillation_against_pytorch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net = nnlang.compile(DISTILL, dtype="float64", batch=4, seed=1)
    t = _torch_weights(torch, net, frozen=TEACHER)

    def loss_fn(f):
        x = torch.from_numpy(f["x"])
        teacher = (F.relu(x @ t[TEACHER[0]] + t[TEACHER[1]]) @ t[TEACHER[2]] + t[TEACHER[3]])
        student = x @ t["student.weight"] + t["student.bias"]
        soft = F.kl_div(F.log_softmax(student / 4, -1), F.log_softmax(teacher / 4, -1),
                        reduction="batchmean", log_target=True)
        hard = F.cross_entropy(student, torch.from_numpy(f["label"]).long(),
                               label_smoothing=0.1)
        return 0.7 * 16 * soft + 0.3 * hard
    _steps_against(net, torch, t, _distill_batches(), loss_fn,
                   torch.optim.Adam([t["student.weight"], t["student.bias"]], lr=0.05))


WAVENET = """
block Gated(x, d, ch = 4) {
  f = conv1d(x, ch, 2, dilation = d, padding = "causal") |> tanh
  g = conv1d(x, ch, 2, dilation = d, padding = "causal") |> sigmoid
  z = f * g
  res = conv1d(z, ch, 1)
  skip = conv1d(z, ch, 1)
  return x + res, skip
}
model WaveNet {
  input signal: float32[batch, 1, 10]
  input target: float32[batch, 10]
  x0 = conv1d(signal, 4, 1)
  h1, s1 = Gated(x0, 1)
  h2, s2 = Gated(h1, 2)
  h3, s3 = Gated(h2, 4)
  pred = relu(s1 + s2 + s3) |> conv1d(1, 1) |> squeeze(axis = 1)
  output pred
  loss huber(pred, target, delta = 0.5)
}
train WaveNet {
  optimizer = adam(lr = 0.01)
  batch = 3
}
"""


def _wavenet_batches():
    """The next sample of a noise signal, twice as loud: |error| both sides of delta."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(3):
        s = rng.normal(size=(3, 1, 11))
        out.append({"signal": s[:, :, :-1].copy(), "target": 2 * s[:, 0, 1:]})
    return out


def test_wavenet_gated_causal_stack_against_pytorch():
    """tanh * sigmoid gates on causal dilated convs (1, 2, 4), residual and skip sums, huber:
    torch's left-padded conv1d and F.huber_loss. The last block's residual conv feeds nothing
    (its gradient is zero, torch's None)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net = nnlang.compile(WAVENET, dtype="float64", batch=3, seed=1)
    t = _torch_weights(torch, net)

    def conv(x, n, d=1):
        k = t[f"{n}.weight"].shape[-1]
        return F.conv1d(F.pad(x, ((k - 1) * d, 0)), t[f"{n}.weight"], t[f"{n}.bias"], dilation=d)

    def loss_fn(f):
        x, skips = conv(torch.from_numpy(f["signal"]), "x0"), 0
        for n, d in (("h1", 1), ("h2", 2), ("h3", 4)):
            z = torch.tanh(conv(x, f"{n}.f", d)) * torch.sigmoid(conv(x, f"{n}.g", d))
            x, skips = x + conv(z, f"{n}.res"), skips + conv(z, f"{n}.skip")
        pred = conv(F.relu(skips), "pred").squeeze(1)
        # 0 * x: the unused residual conv's gradient is zero, where torch would leave None
        return F.huber_loss(pred, torch.from_numpy(f["target"]), delta=0.5) + 0 * x.sum()
    _steps_against(net, torch, t, _wavenet_batches(), loss_fn,
                   torch.optim.Adam(list(t.values()), lr=0.01))


def test_wavenet_is_causal_numpy():
    """A change at time 6 moves no prediction before it; the receptive field is 1 + 1 + 2 + 4
    = 8 samples, so it reaches time 13 (past the end) and moves all of 6..9."""
    net = nnlang.compile(WAVENET, dtype="float64", batch=3, seed=1)
    f = _wavenet_batches()[0]
    g = {**f, "signal": f["signal"].copy()}
    g["signal"][:, :, 6] += 1.0
    moved = np.abs(net.forward(g)["pred"] - net.forward(f)["pred"]).max(0) > 1e-12
    assert moved.tolist() == [False] * 6 + [True] * 4


RANKING = """
block Embed(x) {
  return dense(x, 8) |> relu |> dense(4)
}
model Triplet(margin = 0.5) {
  input anchor: float32[batch, 6]
  input pos: float32[batch, 6]
  input neg: float32[batch, 6]
  input y: float32[batch]
  a = Embed(anchor)
  p = Embed(pos, share = a)
  n = Embed(neg, share = a)
  # the formulas `nnlang check` hints for triplet_margin_loss and margin_ranking_loss
  dp = sqrt(sum((a - p + 1e-6) ** 2, axis = -1))
  dn = sqrt(sum((a - n + 1e-6) ** 2, axis = -1))
  output a
  loss triplet = mean(relu(dp - dn + margin))
  loss ranking = mean(relu(0.2 - y * (dn - dp)))
}
train Triplet {
  optimizer = sgd(lr = 0.1, momentum = 0.9, nesterov = true)
  batch = 4
}
"""
EMBED = ("a.dense.weight", "a.dense.bias", "a.dense_1.weight", "a.dense_1.bias")


def _ranking_batches():
    rng = np.random.default_rng(0)
    return [{"anchor": rng.normal(size=(4, 6)), "pos": rng.normal(size=(4, 6)),
             "neg": rng.normal(size=(4, 6)), "y": rng.choice([-1.0, 1.0], 4)}
            for _ in range(3)]


def test_siamese_triplet_and_ranking_losses_numpy():
    """The hints' own formulas (PyTorch's pairwise_distance adds 1e-6 to the difference, not
    to the square; the tutorial's triplet above does the latter) on three calls of one tower
    (share =): one set of weights, and the losses numpy's."""
    net = nnlang.compile(RANKING, dtype="float64", batch=4, seed=1)
    p, f = net.parameters(), _ranking_batches()[0]
    assert sorted(p) == sorted(EMBED)

    def embed(x):
        return np.maximum(x @ p[EMBED[0]] + p[EMBED[1]], 0) @ p[EMBED[2]] + p[EMBED[3]]
    a, pos, neg = (embed(f[k]) for k in ("anchor", "pos", "neg"))
    dp, dn = (np.sqrt(np.sum((a - v + 1e-6) ** 2, -1)) for v in (pos, neg))
    want = {"triplet": np.mean(np.maximum(dp - dn + 0.5, 0)),
            "ranking": np.mean(np.maximum(0.2 - f["y"] * (dn - dp), 0))}
    assert net.evaluate(f) == pytest.approx({"loss": sum(want.values()), **want}, rel=1e-12)


def test_siamese_triplet_against_pytorch():
    """torch's F.triplet_margin_loss and F.margin_ranking_loss on F.pairwise_distance, SGD
    with Nesterov momentum."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net = nnlang.compile(RANKING, dtype="float64", batch=4, seed=1)
    t = _torch_weights(torch, net)

    def embed(x):
        return F.relu(torch.from_numpy(x) @ t[EMBED[0]] + t[EMBED[1]]) @ t[EMBED[2]] + t[EMBED[3]]

    def loss_fn(f):
        a, p, n = (embed(f[k]) for k in ("anchor", "pos", "neg"))
        ranking = F.margin_ranking_loss(F.pairwise_distance(a, n), F.pairwise_distance(a, p),
                                        torch.from_numpy(f["y"]), margin=0.2)
        return F.triplet_margin_loss(a, p, n, margin=0.5) + ranking
    _steps_against(net, torch, t, _ranking_batches(), loss_fn,
                   torch.optim.SGD(list(t.values()), lr=0.1, momentum=0.9, nesterov=True))


@pytest.mark.parametrize("name", ["mobilenet_channels_first", "mobilenet_channels_last",
                                  "resnext", "distill", "wavenet", "triplet", "imbalanced"])
def test_newest_textbook_models_export_to_onnx(name):
    """`nnlang export` of each: onnxruntime's outputs equal nnlang's (float32, batch 3)."""
    from tests.test_export import TOL, drawn_batch, run_onnx
    pytest.importorskip("onnxruntime")
    src = {"mobilenet_channels_first": MOBILENET["channels_first"],
           "mobilenet_channels_last": MOBILENET["channels_last"], "resnext": RESNEXT,
           "distill": DISTILL.replace("output student", "output student\n  output teacher"),
           "wavenet": WAVENET, "triplet": RANKING,
           "imbalanced": IMBALANCED.replace("output logits", "output logits\n  output tag_logits")
           }[name]
    net = nnlang.compile(src, batch=3, seed=1)
    feeds = drawn_batch(net, 3)
    want, got = net.forward(feeds), run_onnx(nnlang.export_onnx(net), feeds)
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=TOL, err_msg=k)


SIAMESE_BN = """
block Tower(x) {
  return dense(x, 4, use_bias = false) |> batch_norm |> relu
}
model Siamese {
  input left: float32[batch, 3]
  input right: float32[batch, 3]
  a = Tower(left)
  b = Tower(right, share = a)
  loss mean((a - b) ** 2)
}
train Siamese {
  optimizer = sgd(lr = 0.1)
  batch = 4
}
"""


def test_shared_batch_norm_updates_its_statistics_once_per_call_numpy():
    """A tower with batch_norm called twice (share =): PyTorch's module updates its running
    statistics at each call, in call order. Only the last call's update was kept (the left
    tower's batch statistics were dropped). numpy: both updates, left then right."""
    net = nnlang.compile(SIAMESE_BN, dtype="float64", batch=4, seed=1)
    p = net.parameters()
    rng = np.random.default_rng(0)
    f = {"left": rng.normal(size=(4, 3)), "right": rng.normal(size=(4, 3)) + 1}
    mean, var = p["a.batch_norm.running_mean"], p["a.batch_norm.running_var"]
    for side in ("left", "right"):
        h = f[side] @ p["a.dense.weight"]
        mean, var = 0.9 * mean + 0.1 * h.mean(0), 0.9 * var + 0.1 * h.var(0, ddof=1)
    net.train_step(f)
    got = net.parameters()
    np.testing.assert_allclose(got["a.batch_norm.running_mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(got["a.batch_norm.running_var"], var, rtol=1e-12)
    torch = pytest.importorskip("torch")
    t = {k: torch.tensor(v) for k, v in p.items()}
    for side in ("left", "right"):
        torch.nn.functional.batch_norm(torch.from_numpy(f[side]) @ t["a.dense.weight"],
                                       t["a.batch_norm.running_mean"],
                                       t["a.batch_norm.running_var"], training=True)
    np.testing.assert_allclose(got["a.batch_norm.running_var"],
                               t["a.batch_norm.running_var"].numpy(), rtol=1e-12)


# *** fourth round: course assignments (CS231n, CS224n), each against the assignment's own
# formula in numpy and, where a step is long to write out, a PyTorch twin ***

TWO_LAYER = """
model TwoLayerNet(hidden = 10, classes = 3) {
  input x: float32[batch, 5]
  input y: int32[batch]
  h = dense(x, hidden) |> relu
  scores = dense(h, classes)
  output scores
  loss cross_entropy(scores, y)
}
train TwoLayerNet {
  optimizer = sgd(lr = 0.1)
  batch = 4
  l2 = 0.05
}
"""


def test_cs231n_two_layer_net_softmax_loss_with_l2_numpy():
    """cs231n's TwoLayerNet.loss: softmax loss + reg * (sum(W1^2) + sum(W2^2)), dW += 2 reg W,
    biases unregularized: `l2 = reg` (docs/language.md: Keras' l2; the older 0.5 * reg form is
    l2 = reg / 2). The step's loss includes the penalty, `evaluate`'s does not; one SGD step
    is W - lr dW."""
    net = nnlang.compile(TWO_LAYER, dtype="float64", batch=4, seed=1)
    p = net.parameters()
    rng = np.random.default_rng(0)
    f = {"x": rng.normal(size=(4, 5)), "y": rng.integers(0, 3, 4).astype(np.int32)}
    w1, b1, w2, b2 = p["h.weight"], p["h.bias"], p["scores.weight"], p["scores.bias"]
    h = np.maximum(f["x"] @ w1 + b1, 0)
    s = h @ w2 + b2
    e = np.exp(s - s.max(1, keepdims=True))
    prob = e / e.sum(1, keepdims=True)
    data = -np.log(prob[np.arange(4), f["y"]]).mean()
    reg = 0.05 * (np.sum(w1 * w1) + np.sum(w2 * w2))
    ds = prob.copy()
    ds[np.arange(4), f["y"]] -= 1
    ds /= 4
    dw2, db2 = h.T @ ds + 2 * 0.05 * w2, ds.sum(0)
    dh = (ds @ w2.T) * (h > 0)
    dw1, db1 = f["x"].T @ dh + 2 * 0.05 * w1, dh.sum(0)
    want = {"h.weight": dw1, "h.bias": db1, "scores.weight": dw2, "scores.bias": db2}
    got = net.gradients(f)
    for k in p:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-14, err_msg=k)
    assert net.evaluate(f)["cross_entropy"] == pytest.approx(data, rel=1e-12)
    assert net.train_step(f) == pytest.approx(data + reg, rel=1e-12)
    for k, v in net.parameters().items():
        np.testing.assert_allclose(v, p[k] - 0.1 * want[k], rtol=1e-10, err_msg=k)


PARSER = """
model ParserModel(words = 20, tags = 7, labels = 5, dim = 4, hidden = 8, drop = 0.5) {
  input w: int32[batch, 18]      # the 18 word features of a configuration
  input p: int32[batch, 18]      # their POS tags
  input l: int32[batch, 12]      # the 12 arc labels
  input y: int32[batch]          # SHIFT, LEFT-ARC, RIGHT-ARC
  ew = embedding(w, words, dim) |> flatten                 # [batch, 18 * dim]
  ep = embedding(p, tags, dim) |> flatten
  el = embedding(l, labels, dim) |> flatten
  x = concat(ew, ep, el, axis = -1)
  h = dense(x, hidden) ** 3                               # Chen & Manning's cube activation
  logits = dropout(h, rate = drop) |> dense(3)
  output logits
  loss cross_entropy(logits, y)
  metric acc = accuracy(logits, y)
}
train ParserModel {
  optimizer = adam(lr = 0.05)
  batch = 6
}
"""


def _parser_batches():
    rng = np.random.default_rng(0)

    def ids(hi, n):
        return rng.integers(0, hi, (6, n)).astype(np.int32)
    return [{"w": ids(20, 18), "p": ids(7, 18), "l": ids(5, 12),
             "y": rng.integers(0, 3, 6).astype(np.int32)} for _ in range(3)]


def _parser_logits(p, f):
    x = np.concatenate([p[f"e{k}.weight"][f[k]].reshape(6, -1) for k in "wpl"], -1)
    return (x @ p["h.weight"] + p["h.bias"]) ** 3 @ p["logits.weight"] + p["logits.bias"]


def test_cs224n_parser_evaluates_without_dropout_numpy():
    """Three tables gathered and concatenated (18 * 4 + 18 * 4 + 12 * 4 = 192 inputs), the cube,
    and dropout the identity at evaluation: the logits and the loss are numpy's."""
    net = nnlang.compile(PARSER, dtype="float64", batch=6, seed=1)
    p, f = net.parameters(), _parser_batches()[0]
    assert p["h.weight"].shape == (192, 8)
    logits = _parser_logits(p, f)
    np.testing.assert_allclose(net.forward(f)["logits"], logits, rtol=1e-12)
    z = logits - logits.max(1, keepdims=True)
    nll = np.log(np.exp(z).sum(1)) - z[np.arange(6), f["y"]]
    assert net.evaluate(f)["cross_entropy"] == pytest.approx(nll.mean(), rel=1e-12)


def test_cs224n_parser_against_pytorch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net = nnlang.compile(nnlang.load(PARSER, {"drop": 0.0}), dtype="float64", batch=6, seed=1)
    t = _torch_weights(torch, net)

    def loss_fn(f):
        x = torch.cat([t[f"e{k}.weight"][torch.from_numpy(f[k]).long()].flatten(1)
                       for k in "wpl"], -1)
        logits = (x @ t["h.weight"] + t["h.bias"]) ** 3 @ t["logits.weight"] + t["logits.bias"]
        return F.cross_entropy(logits, torch.from_numpy(f["y"]).long())
    _steps_against(net, torch, t, _parser_batches(), loss_fn,
                   torch.optim.Adam(list(t.values()), lr=0.05))


WORD_VECTORS = {
    "cbow": """
model Cbow(vocab = 13, dim = 4, window = 4, negatives = 5) {
  input context: int32[batch, window]
  input center: int32[batch]
  input noise: int32[batch, negatives]
  v = embedding(context, vocab, dim) |> mean(axis = 1)      # the mean of the context vectors
  u = embedding(center, vocab, dim)
  n = embedding(noise, vocab, dim, share = u)
  pos = sum(v * u, axis = -1)
  neg = sum(unsqueeze(v, axis = 1) * n, axis = -1)
  loss -mean(log(sigmoid(pos)) + sum(log(sigmoid(-neg)), axis = -1))
}
train Cbow {
  optimizer = sgd(lr = 1.0)
  batch = 6
}
""",
    "glove": """
model Glove(vocab = 11, dim = 4, xmax = 10.0, alpha = 0.75) {
  input i: int32[batch]
  input j: int32[batch]
  input x: float32[batch]        # the co-occurrence count X_ij (> 0)
  w = embedding(i, vocab, dim)
  wt = embedding(j, vocab, dim)
  b = embedding(i, vocab, 1) |> squeeze(axis = -1)
  bt = embedding(j, vocab, 1) |> squeeze(axis = -1)
  fx = minimum((x / xmax) ** alpha, 1.0)
  loss sum(fx * (sum(w * wt, axis = -1) + b + bt - log(x)) ** 2)
}
train Glove {
  optimizer = adam(lr = 0.05)
  batch = 6
}
"""}


def _word_vector_batches(name):
    rng = np.random.default_rng(0)

    def ids(hi, shape):
        return rng.integers(0, hi, shape).astype(np.int32)
    if name == "cbow":
        return [{"context": ids(13, (6, 4)), "center": ids(13, 6), "noise": ids(13, (6, 5))}
                for _ in range(3)]
    return [{"i": ids(11, 6), "j": ids(11, 6), "x": rng.integers(1, 30, 6).astype(np.float64)}
            for _ in range(3)]


def _word_vector_loss(name, p, f):
    """The papers' objectives in numpy: CBOW with negative sampling (Mikolov et al. 2013) and
    GloVe's weighted least squares with f(x) = min((x / xmax)^alpha, 1)."""
    def log_sigmoid(z):
        return -np.logaddexp(0, -z)
    if name == "cbow":
        v = p["v.weight"][f["context"]].mean(1)
        u, n = p["u.weight"][f["center"]], p["u.weight"][f["noise"]]
        return -np.mean(log_sigmoid((v * u).sum(-1))
                        + log_sigmoid(-(v[:, None] * n).sum(-1)).sum(-1))
    w, wt = p["w.weight"][f["i"]], p["wt.weight"][f["j"]]
    d = (w * wt).sum(-1) + p["b.weight"][f["i"], 0] + p["bt.weight"][f["j"], 0] - np.log(f["x"])
    return np.sum(np.minimum((f["x"] / 10) ** 0.75, 1) * d ** 2)


@pytest.mark.parametrize("name", sorted(WORD_VECTORS))
def test_word_vectors_loss_numpy(name):
    net = nnlang.compile(WORD_VECTORS[name], dtype="float64", batch=6, seed=1)
    for f in _word_vector_batches(name):
        want = _word_vector_loss(name, net.parameters(), f)
        assert net.train_step(f) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("name", sorted(WORD_VECTORS))
def test_word_vectors_against_pytorch(name):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net = nnlang.compile(WORD_VECTORS[name], dtype="float64", batch=6, seed=1)
    t = _torch_weights(torch, net)

    def loss_fn(f):
        f = {k: torch.from_numpy(v).long() if v.dtype == np.int32 else torch.from_numpy(v)
             for k, v in f.items()}
        if name == "cbow":
            v = t["v.weight"][f["context"]].mean(1)
            u, n = t["u.weight"][f["center"]], t["u.weight"][f["noise"]]
            return -(F.logsigmoid((v * u).sum(-1))
                     + F.logsigmoid(-(v[:, None] * n).sum(-1)).sum(-1)).mean()
        d = (t["w.weight"][f["i"]] * t["wt.weight"][f["j"]]).sum(-1) + t["b.weight"][f["i"], 0] \
            + t["bt.weight"][f["j"], 0] - torch.log(f["x"])
        return (torch.clamp((f["x"] / 10) ** 0.75, max=1) * d ** 2).sum()
    opt = torch.optim.SGD(list(t.values()), lr=1.0) if name == "cbow" else \
        torch.optim.Adam(list(t.values()), lr=0.05)
    _steps_against(net, torch, t, _word_vector_batches(name), loss_fn, opt)


HIGHWAY = """
model CharEncoder(chars = 15, echar = 5, words = 3, mword = 9, embed = 6, k = 5, drop = 0.3) {
  input ch: int32[batch, words, mword]
  input target: float32[batch, words, embed]
  e = embedding(ch, chars, echar) |> reshape([-1, mword, echar]) |> permute([0, 2, 1])
  xconv = conv1d(e, embed, k) |> relu |> max(axis = -1)      # max over time
  proj = dense(xconv, embed) |> relu
  gate = dense(xconv, embed) |> sigmoid
  hw = gate * proj + (1 - gate) * xconv                       # the highway
  out = dropout(hw, rate = drop) |> reshape([-1, words, embed])
  output out
  loss mse(out, target)
}
train CharEncoder {
  optimizer = sgd(lr = 0.5, momentum = 0.9)
  batch = 4
}
"""


def _highway_batches():
    rng = np.random.default_rng(0)
    return [{"ch": rng.integers(0, 15, (4, 3, 9)).astype(np.int32),
             "target": rng.normal(size=(4, 3, 6))} for _ in range(3)]


def test_cs224n_char_cnn_highway_encoder_numpy():
    """chars -> embedding -> conv1d -> relu -> max over time -> highway, per word: numpy's
    (dropout the identity at evaluation)."""
    net = nnlang.compile(HIGHWAY, dtype="float64", batch=4, seed=1)
    p, f = net.parameters(), _highway_batches()[0]
    e = p["e.weight"][f["ch"]].reshape(12, 9, 5)                       # [words, time, chars]
    win = np.lib.stride_tricks.sliding_window_view(e, 5, axis=1)       # [words, 5, echar, k]
    conv = np.einsum("wtck,fck->wft", win, p["xconv.weight"]) + p["xconv.bias"][:, None]
    x = np.maximum(conv, 0).max(-1)
    proj = np.maximum(x @ p["proj.weight"] + p["proj.bias"], 0)
    gate = 1 / (1 + np.exp(-(x @ p["gate.weight"] + p["gate.bias"])))
    want = (gate * proj + (1 - gate) * x).reshape(4, 3, 6)
    np.testing.assert_allclose(net.forward(f)["out"], want, rtol=1e-12, atol=1e-15)


def test_cs224n_char_cnn_highway_encoder_against_pytorch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net = nnlang.compile(nnlang.load(HIGHWAY, {"drop": 0.0}), dtype="float64", batch=4, seed=1)
    t = _torch_weights(torch, net)

    def loss_fn(f):
        e = t["e.weight"][torch.from_numpy(f["ch"]).long()].reshape(-1, 9, 5).permute(0, 2, 1)
        x = F.relu(F.conv1d(e, t["xconv.weight"], t["xconv.bias"])).amax(-1)
        proj = F.relu(x @ t["proj.weight"] + t["proj.bias"])
        gate = torch.sigmoid(x @ t["gate.weight"] + t["gate.bias"])
        return F.mse_loss((gate * proj + (1 - gate) * x).reshape(-1, 3, 6),
                          torch.from_numpy(f["target"]))
    _steps_against(net, torch, t, _highway_batches(), loss_fn,
                   torch.optim.SGD(list(t.values()), lr=0.5, momentum=0.9))


NMT = """
model Nmt(vocab = 12, src_len = 6, tgt_len = 5, embed = 4, units = 3) {
  input source: int32[batch, src_len]
  input decoder_in: int32[batch, tgt_len]    # <start> y1 y2 ...
  input target: int32[batch, tgt_len]        # y1 y2 ... <end>, then <pad> (0)
  keep = source != 0
  enc, hf, cf, hb, cb = lstm(embedding(source, vocab, embed), units, mask = keep,
                             bidirectional = true, return_state = true, return_sequences = true)
  h0 = dense(concat(hf, hb, axis = -1), units, use_bias = false)   # h_proj, c_proj
  c0 = dense(concat(cf, cb, axis = -1), units, use_bias = false)
  dec = lstm(embedding(decoder_in, vocab, embed), units, initial_h = h0, initial_c = c0,
             return_sequences = true)
  keys = dense(enc, units, use_bias = false)                         # att_proj
  scores = dec @ transpose(keys, perm = [0, 2, 1])                   # [batch, tgt, src]
  alpha = softmax(where(unsqueeze(keep, axis = 1), scores, -1e9))
  o = dense(concat(alpha @ enc, dec, axis = -1), units, use_bias = false) |> tanh
  logits = dense(o, vocab, use_bias = false)
  output logits
  loss cross_entropy(logits, target, ignore_index = 0)    # the mean over real tokens
}
train Nmt {
  optimizer = adam(lr = 0.01)
  batch = 3
}
"""


def _nmt_batches():
    rng = np.random.default_rng(0)
    out = []
    for _ in range(3):
        src, tgt = rng.integers(3, 12, (3, 6)), rng.integers(3, 12, (3, 5))
        src[0, 4:], src[1, 2:] = 0, 0
        tgt[0, 3], tgt[0, 4:], tgt[2, 1], tgt[2, 2:] = 2, 0, 2, 0
        dec = np.concatenate([np.ones((3, 1), np.int64), tgt[:, :-1]], 1)
        out.append({"source": src.astype(np.int32), "decoder_in": dec.astype(np.int32),
                    "target": tgt.astype(np.int32)})
    return out


def test_nmt_loss_is_the_mean_over_real_target_tokens_numpy():
    """CS224n's masked loss: the mean of -log p over the real tokens (numpy log-softmax of the
    logits); the pads, marked 0 or -100, give the same gradients, and counted (a pad read as
    class 7) another loss."""
    net = nnlang.compile(NMT, dtype="float64", batch=3, seed=1)
    f = _nmt_batches()[0]
    real = f["target"] != 0
    other = dict(f, target=np.where(real, f["target"], 7).astype(np.int32))
    logits = net.forward(f)["logits"]
    z = logits - logits.max(-1, keepdims=True)
    nll = np.log(np.exp(z).sum(-1)) - np.take_along_axis(z, f["target"][..., None], -1)[..., 0]
    assert net.evaluate(f)["cross_entropy"] == pytest.approx(nll[real].mean(), rel=1e-12)
    assert net.evaluate(other)["cross_entropy"] != pytest.approx(nll[real].mean(), rel=1e-6)
    ignored = net.gradients(f)
    # PyTorch's -100 at the pads instead: the same loss and gradients
    torch_style = dict(f, target=np.where(real, f["target"], -100).astype(np.int32))
    on_pads = nnlang.compile(NMT.replace("ignore_index = 0", "ignore_index = -100"),
                             dtype="float64", batch=3, seed=1).gradients(torch_style)
    for k in ignored:
        np.testing.assert_allclose(on_pads[k], ignored[k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_nmt_with_luong_attention_against_pytorch():
    """Bidirectional masked encoder, its final states projected into the decoder's, Luong's
    multiplicative attention with the source padding masked, [context; h] -> tanh, and the loss
    over the real target tokens: PyTorch's masked_fill(-inf) and ignore_index."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    net = nnlang.compile(NMT, dtype="float64", batch=3, seed=1)
    t = _torch_weights(torch, net)

    def lstm(x, prefix, keep=None, h=None, c=None, reverse=False):
        k, r, b = (t[f"{prefix}{w}"] for w in ("kernel", "recurrent", "bias"))
        u = r.shape[0]
        h = torch.zeros(x.shape[0], u, dtype=x.dtype) if h is None else h
        c = torch.zeros(x.shape[0], u, dtype=x.dtype) if c is None else c
        out = [None] * x.shape[1]
        for s in reversed(range(x.shape[1])) if reverse else range(x.shape[1]):
            z = x[:, s] @ k + h @ r + b
            i, f, g, o = (z[:, j * u:(j + 1) * u] for j in range(4))
            c2 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h2 = torch.sigmoid(o) * torch.tanh(c2)
            m = torch.ones(x.shape[0], 1, dtype=torch.bool) if keep is None else keep[:, s:s + 1]
            h, c = torch.where(m, h2, h), torch.where(m, c2, c)
            out[s] = h * m
        return torch.stack(out, 1), h, c

    def loss_fn(f):
        src, dec_in, tgt = (torch.from_numpy(f[k]).long()
                            for k in ("source", "decoder_in", "target"))
        keep, x = src != 0, t["embedding.weight"][src]
        ef, hf, cf = lstm(x, "enc.", keep)
        eb, hb, cb = lstm(x, "enc.backward_", keep, reverse=True)
        enc = torch.cat([ef, eb], -1)
        dec, _, _ = lstm(t["embedding_1.weight"][dec_in], "dec.", None,
                         torch.cat([hf, hb], -1) @ t["h0.weight"],
                         torch.cat([cf, cb], -1) @ t["c0.weight"])
        scores = (dec @ (enc @ t["keys.weight"]).transpose(1, 2)).masked_fill(
            ~keep[:, None], float("-inf"))
        o = torch.tanh(torch.cat([torch.softmax(scores, -1) @ enc, dec], -1) @ t["o.weight"])
        return F.cross_entropy((o @ t["logits.weight"]).reshape(-1, 12), tgt.reshape(-1),
                               ignore_index=0)
    _steps_against(net, torch, t, _nmt_batches(), loss_fn,
                   torch.optim.Adam(list(t.values()), lr=0.01))
