"""PyTorch twins of the reference models in models/*.nn, for the comparison scripts.

Each twin has the same architecture and the same trainable parameter count as its .nn model, and
`load_nnlang(module, params)` copies an nnlang Net's parameters into it (layouts transposed or
permuted as needed). `python benchmarks/torch_models.py --check` proves the architectures equal:
with copied weights both frameworks give the same loss and the same gradients on one batch.

PyTorch is used ONLY here and in the other benchmark scripts; the nnlang package never imports it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as _err:  # NOTE: every PyTorch comparison script imports this module first
    raise SystemExit(f"error: benchmarks/torch_models.py: the PyTorch comparisons need PyTorch "
                     f"({_err})\n  hint: pip install torch (the CPU build is enough); the "
                     "nnlang package itself never needs it") from None

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # NOTE: run from a checkout without installing nnlang

MODELS = ("mlp", "cnn", "lstm", "gru", "conv1d", "transformer")


def model_path(name: str) -> Path:
    return ROOT / "models" / f"{name}.nn"


# *** parameter layout: one Slot per nnlang parameter, in nnlang's parameter order ***

@dataclass
class Slot:
    """Where one nnlang parameter goes: `fn(nnlang array)` is written into `param[rows]`.
    The maps are pure layout changes (transpose, gate-block permutation, row slice), so the
    same `fn` also maps nnlang's gradient onto torch's `param.grad[rows]`."""
    param: nn.Parameter
    fn: Callable = lambda a: a
    rows: slice | None = None

    def view(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.rows is None else t[self.rows]


def _t(a):
    return a.T


def _gate_perm(units: int, order: tuple) -> Callable:
    """Reorders gate blocks of size `units` along axis 0 (torch keeps gates on rows)."""
    idx = np.concatenate([np.arange(k * units, (k + 1) * units) for k in order])
    return lambda a: a[idx]


def _linear_slots(lin: nn.Linear) -> list[Slot]:
    # nnlang dense weight is [in, out]; torch Linear weight is [out, in]
    return [Slot(lin.weight, _t), Slot(lin.bias)]


# *** the models ***

class Mlp(nn.Module):
    """models/mlp.nn: 784-512-256-10 with ReLU."""
    loss_kind = "ce"

    def __init__(self, hidden1=512, hidden2=256, classes=10, **_):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, hidden1), nn.Linear(hidden1, hidden2)
        self.fc3 = nn.Linear(hidden2, classes)

    def forward(self, image):
        x = torch.relu(self.fc1(image.reshape(len(image), -1)))
        return self.fc3(torch.relu(self.fc2(x)))

    def slots(self):
        return _linear_slots(self.fc1) + _linear_slots(self.fc2) + _linear_slots(self.fc3)


class Cnn(nn.Module):
    """models/cnn.nn: two conv(3x3, pad 1) + relu + max-pool stages, dense 128, dense classes."""
    loss_kind = "ce"

    def __init__(self, classes=10, **_):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(64 * 7 * 7, 128), nn.Linear(128, classes)

    def forward(self, image):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(image)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))

    def slots(self):
        # conv weights share the [filters, channels, kh, kw] layout
        return ([Slot(self.conv1.weight), Slot(self.conv1.bias), Slot(self.conv2.weight),
                 Slot(self.conv2.bias)] + _linear_slots(self.fc1) + _linear_slots(self.fc2))


class Lstm(nn.Module):
    """models/lstm.nn: embedding -> LSTM (last h) -> one logit."""
    loss_kind = "bce"

    def __init__(self, vocab=20000, maxlen=200, embed=128, units=128, **_):
        super().__init__()
        self.units = units
        self.emb = nn.Embedding(vocab, embed)
        self.rnn = nn.LSTM(embed, units, batch_first=True)
        # NOTE: torch has two biases that only ever appear summed; nnlang (Keras) has one. The
        # second stays zero and frozen, else Adam would move the effective bias twice as fast.
        with torch.no_grad():
            self.rnn.bias_hh_l0.zero_()
        self.rnn.bias_hh_l0.requires_grad_(False)
        self.fc = nn.Linear(units, 1)

    def forward(self, tokens):
        _, (h, _) = self.rnn(self.emb(tokens))
        return self.fc(h[-1]).squeeze(-1)

    def slots(self):
        # Keras gates i, f, c, o are torch's i, f, g, o: same order, only transposed
        r = self.rnn
        return ([Slot(self.emb.weight), Slot(r.weight_ih_l0, _t), Slot(r.weight_hh_l0, _t),
                 Slot(r.bias_ih_l0)] + _linear_slots(self.fc))


class Gru(nn.Module):
    """models/gru.nn: embedding -> GRU (Keras reset_after, which is torch's form) -> one logit."""
    loss_kind = "bce"

    def __init__(self, vocab=20000, maxlen=200, embed=128, units=128, **_):
        super().__init__()
        self.units = units
        self.emb = nn.Embedding(vocab, embed)
        self.rnn = nn.GRU(embed, units, batch_first=True)
        self.fc = nn.Linear(units, 1)

    def forward(self, tokens):
        _, h = self.rnn(self.emb(tokens))
        return self.fc(h[-1]).squeeze(-1)

    def slots(self):
        # Keras gate blocks z, r, h -> torch r, z, n; bias row 0 is the input bias, row 1 the
        # recurrent one (inside the reset product for the candidate, as in torch's b_hn)
        r, perm = self.rnn, _gate_perm(self.units, (1, 0, 2))
        return ([Slot(self.emb.weight), Slot(r.weight_ih_l0, lambda a: perm(a.T)),
                 Slot(r.weight_hh_l0, lambda a: perm(a.T)),
                 Slot(_Pair(r.bias_ih_l0, r.bias_hh_l0), lambda a: perm(a.T).T)]
                + _linear_slots(self.fc))


class _Pair:
    """Two 1-D parameters seen as nnlang's one [2, n] GRU bias (copy and grad go row-wise)."""

    def __init__(self, a: nn.Parameter, b: nn.Parameter):
        self.a, self.b = a, b

    @property
    def data(self):
        return torch.stack([self.a.data, self.b.data])

    @property
    def grad(self):
        return torch.stack([self.a.grad, self.b.grad])

    def copy_(self, value: torch.Tensor):
        self.a.data.copy_(value[0])
        self.b.data.copy_(value[1])


class TextCnn(nn.Module):
    """models/conv1d.nn: embedding -> conv1d over time + relu -> global max pool -> one logit."""
    loss_kind = "bce"

    def __init__(self, vocab=20000, maxlen=200, embed=128, filters=128, width=5, **_):
        super().__init__()
        self.emb = nn.Embedding(vocab, embed)
        self.conv = nn.Conv1d(embed, filters, width)
        self.fc = nn.Linear(filters, 1)

    def forward(self, tokens):
        c = torch.relu(self.conv(self.emb(tokens).transpose(1, 2)))  # [batch, filters, time]
        return self.fc(c.amax(dim=2)).squeeze(-1)

    def slots(self):
        return ([Slot(self.emb.weight), Slot(self.conv.weight), Slot(self.conv.bias)]
                + _linear_slots(self.fc))


class Transformer(nn.Module):
    """models/transformer.nn: embedding + learned positions, post-norm encoder layers
    (nn.TransformerEncoderLayer, ReLU, no dropout), mean over real tokens, one logit."""
    loss_kind = "bce"

    def __init__(self, vocab=20000, maxlen=128, embed=128, heads=4, ffn=512, layers=2, **_):
        super().__init__()
        self.embed = embed
        self.emb = nn.Embedding(vocab, embed)
        self.pos = nn.Parameter(torch.zeros(maxlen, embed))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(embed, heads, ffn, dropout=0.0, batch_first=True)
            for _ in range(layers))
        self.fc = nn.Linear(embed, 1)

    def forward(self, tokens):
        mask = tokens != 0
        h = self.emb(tokens) + self.pos[: tokens.shape[1]]
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=~mask)  # torch: True marks a key to IGNORE
        keep = mask.to(h.dtype).unsqueeze(-1)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return self.fc(pooled).squeeze(-1)

    def slots(self):
        e = self.embed
        out = [Slot(self.emb.weight), Slot(self.pos)]
        for layer in self.layers:
            att = layer.self_attn
            for k in range(3):  # wq, bq, wk, bk, wv, bv live in torch's packed in_proj
                rows = slice(k * e, (k + 1) * e)
                out += [Slot(att.in_proj_weight, _t, rows), Slot(att.in_proj_bias, rows=rows)]
            out += _linear_slots(att.out_proj)
            out += [Slot(layer.norm1.weight), Slot(layer.norm1.bias)]
            out += _linear_slots(layer.linear1) + _linear_slots(layer.linear2)
            out += [Slot(layer.norm2.weight), Slot(layer.norm2.bias)]
        return out + _linear_slots(self.fc)


TORCH_MODELS = {"mlp": Mlp, "cnn": Cnn, "lstm": Lstm, "gru": Gru, "conv1d": TextCnn,
                "transformer": Transformer}


# *** building, copying, losses ***

def load_program(name: str):
    import nnlang
    return nnlang.load(str(model_path(name)))


def build(name: str, hparams: dict | None = None, dtype=torch.float32) -> nn.Module:
    """The torch twin of models/<name>.nn, sized by the program's hyper-parameters."""
    module = TORCH_MODELS[name](**(hparams or {}))
    return module.to(dtype)


def trainable_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def nnlang_trainable(net) -> dict:
    """The trainable parameters of an nnlang Net, by name, in declaration order."""
    g = net.user
    return {k: net.state[k] for k, nid in g.params.items()
            if g.node(nid).attrs.get("trainable", True)}


def load_nnlang(module: nn.Module, params: dict) -> None:
    """Copies nnlang parameters (name -> array, declaration order) into the torch twin.
    NOTE: matched by order and checked by shape, so renamed blocks in a .nn file still work."""
    slots = module.slots()
    if len(slots) != len(params):
        raise ValueError(f"{type(module).__name__}: {len(params)} nnlang parameters but "
                         f"{len(slots)} torch slots")
    with torch.no_grad():
        for (name, value), slot in zip(params.items(), slots):
            src = torch.as_tensor(np.ascontiguousarray(slot.fn(np.asarray(value))))
            dst = slot.view(slot.param.data)
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(f"{name}: nnlang {tuple(value.shape)} maps to "
                                 f"{tuple(src.shape)}, torch slot is {tuple(dst.shape)}")
            if isinstance(slot.param, _Pair):
                slot.param.copy_(src.to(dst.dtype))
            else:
                dst.copy_(src.to(dst.dtype))


def loss_fn(kind: str):
    if kind == "ce":
        return lambda logits, y: nn.functional.cross_entropy(logits, y.long())
    return lambda logits, y: nn.functional.binary_cross_entropy_with_logits(logits, y)


def hits(kind: str, logits: torch.Tensor, y: torch.Tensor) -> int:
    """Correct predictions in a batch (argmax for classes, p > 0.5 for one logit)."""
    pred = logits.argmax(-1) == y.long() if kind == "ce" else (logits > 0) == (y > 0.5)
    return int(pred.sum())


def feature_name(net) -> tuple[str, str]:
    """(feature input, label input) of a reference model: the first input and the other one."""
    names = [k for k in net.user.inputs if not k.startswith("_")]
    return names[0], names[1]


# *** gemm / conv FLOPs of one forward pass, counted by hand from the architecture ***

def forward_gemm_flops(name: str, batch: int, hp: dict) -> int:
    """Multiply-adds x 2 of the matmuls and convolutions in one forward pass."""
    def mm(m, k, n):
        return 2 * m * k * n
    if name == "mlp":
        h1, h2, c = hp.get("hidden1", 512), hp.get("hidden2", 256), hp.get("classes", 10)
        return mm(batch, 784, h1) + mm(batch, h1, h2) + mm(batch, h2, c)
    if name == "cnn":
        return (mm(batch * 28 * 28, 1 * 9, 32) + mm(batch * 14 * 14, 32 * 9, 64)
                + mm(batch, 3136, 128) + mm(batch, 128, hp.get("classes", 10)))
    if name in ("lstm", "gru"):
        gates = 4 if name == "lstm" else 3
        t, e, u = hp.get("maxlen", 200), hp.get("embed", 128), hp.get("units", 128)
        return mm(batch * t, e, gates * u) + t * mm(batch, u, gates * u) + mm(batch, u, 1)
    if name == "conv1d":
        t, e, f, w = (hp.get("maxlen", 200), hp.get("embed", 128), hp.get("filters", 128),
                      hp.get("width", 5))
        return mm(batch * (t - w + 1), e * w, f) + mm(batch, f, 1)
    if name == "transformer":
        t, e, f, n = (hp.get("maxlen", 128), hp.get("embed", 128), hp.get("ffn", 512),
                      hp.get("layers", 2))
        per_layer = (4 * mm(batch * t, e, e) + 2 * mm(batch * t, t, e)
                     + mm(batch * t, e, f) + mm(batch * t, f, e))
        return n * per_layer + mm(batch, e, 1)
    raise KeyError(name)


# *** --check: same loss and gradients with copied weights ***

def random_batch(net, batch: int, rng: np.random.Generator) -> dict:
    """One batch of random inputs of the right shapes: tokens front-padded like IMDB, images
    in [0, 1), labels in range."""
    feat, lab = feature_name(net)
    g = net.user
    shape = [batch if not isinstance(d, int) else d for d in g.node(g.inputs[feat]).shape]
    if g.node(g.inputs[feat]).dtype.startswith("int"):
        vocab = net.program.hparams.get("vocab", 20000)
        x = rng.integers(2, vocab, size=shape).astype(np.int32)
        # front padding like the IMDB loader, a different amount per row (at least 1 real token)
        for i, pad in enumerate(rng.integers(0, shape[1] - 1, size=shape[0])):
            x[i, :pad] = 0
    else:
        x = rng.random(shape, dtype=np.float32)
    if g.node(g.inputs[lab]).dtype.startswith("int"):
        y = rng.integers(0, 10, size=batch).astype(np.int32)
    else:
        y = rng.integers(0, 2, size=batch).astype(np.float32)
    return {feat: x, lab: y}


def nnlang_loss_and_grads(net, feeds: dict) -> tuple[float, dict]:
    """Loss and gradients of the generated backward graph, through the reference interpreter."""
    from nnlang.passes.pipeline import LR_INPUT, train_graph
    from nnlang.runtime.interpret import interpret
    from nnlang.train.feeds import conform
    batch = len(next(iter(feeds.values())))
    g = train_graph(net.user, net.config, batch, net.dtype)
    fed = {k: conform(k, np.asarray(v), g.node(g.inputs[k])) for k, v in feeds.items()}
    fed[LR_INPUT] = np.asarray(0.0, net.dtype)
    state = {k: net.state[k] if k in net.state else
             np.zeros(tuple(int(d) for d in g.node(nid).shape), net.dtype)
             for k, nid in g.params.items()}
    env = interpret(g, fed, state, want={"loss": g.losses["loss"], **g.grads})
    return float(env.pop("loss")), env


def check(name: str, dtype: str = "float32", batch: int = 4, seed: int = 0,
          backend: str = "reference") -> dict:
    """Copies nnlang's initial weights into the torch twin and compares loss and gradients."""
    import nnlang
    tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    net = nnlang.compile(str(model_path(name)), backend=backend, batch=batch, dtype=dtype,
                         seed=seed)
    module = build(name, net.program.hparams, tdtype)
    params = nnlang_trainable(net)
    n_nn, n_torch = sum(v.size for v in params.values()), trainable_count(module)
    assert n_nn == n_torch, f"{name}: nnlang has {n_nn} trainable parameters, torch {n_torch}"
    load_nnlang(module, params)
    feeds = random_batch(net, batch, np.random.default_rng(seed))
    feat, lab = feature_name(net)
    t0 = time.perf_counter()
    loss_nn, grads_nn = nnlang_loss_and_grads(net, feeds)
    t_nn = time.perf_counter() - t0
    ev = net.evaluate(feeds)  # the chosen backend's forward, through the public API
    loss_backend = sum(ev[k] for k in net.user.losses)
    x = torch.as_tensor(feeds[feat])
    x = x if x.dtype == torch.int32 else x.to(tdtype)
    y = torch.as_tensor(feeds[lab])
    y = y if y.dtype == torch.int32 else y.to(tdtype)
    module.zero_grad()
    loss_t = loss_fn(module.loss_kind)(module(x.long() if not x.is_floating_point() else x), y)
    loss_t.backward()
    loss_t = loss_t.item()
    pairs = {}
    for pname, slot in zip(params, module.slots()):
        mine = torch.as_tensor(np.ascontiguousarray(slot.fn(grads_nn[pname])))
        pairs[pname] = (mine, slot.view(slot.param.grad).to(mine.dtype))
    # NOTE: each gradient is compared relative to its own largest entry, floored at 1e-3 of the
    # model's largest one: attention's key bias has an exactly-zero gradient (softmax ignores a
    # constant per query), so both sides hold rounding noise there
    floor = 1e-3 * max(float(t.abs().max()) for _, t in pairs.values())
    worst, where = 0.0, ""
    for pname, (mine, theirs) in pairs.items():
        scale = max(float(theirs.abs().max()), floor, 1e-30)
        err = float((mine - theirs).abs().max()) / scale
        if err > worst:
            worst, where = err, pname
    loss_err = abs(loss_nn - loss_t) / max(abs(loss_t), 1e-12)
    backend_err = abs(loss_backend - loss_t) / max(abs(loss_t), 1e-12)
    return {"model": name, "dtype": dtype, "batch": batch, "params": n_nn,
            "loss_nnlang": loss_nn, "loss_torch": loss_t, "loss_rel_err": loss_err,
            "loss_backend": loss_backend, "backend": backend, "backend_rel_err": backend_err,
            "grad_rel_err": worst, "worst_param": where, "nnlang_grad_s": t_nn}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="compare loss and gradients with copied weights (the default action)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="reference",
                    help="backend whose forward loss is also compared (gradients always come "
                         "from the generated backward graph run by the reference interpreter)")
    ap.add_argument("--tol", type=float, default=None,
                    help="max relative error (default 1e-4 for float32, 1e-9 for float64)")
    args = ap.parse_args(argv)
    tol = args.tol or (1e-4 if args.dtype == "float32" else 1e-9)
    torch.manual_seed(args.seed)
    failed = []
    print(f"| model | params | loss nnlang | loss torch | loss rel err | {args.backend} loss "
          "rel err | max grad rel err (param) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in args.models.split(","):
        r = check(name, args.dtype, args.batch, args.seed, args.backend)
        ok = max(r["loss_rel_err"], r["grad_rel_err"], r["backend_rel_err"]) <= tol
        failed += [] if ok else [name]
        print(f"| {name} | {r['params']:,} | {r['loss_nnlang']:.6f} | {r['loss_torch']:.6f} | "
              f"{r['loss_rel_err']:.1e} | {r['backend_rel_err']:.1e} | {r['grad_rel_err']:.1e} "
              f"({r['worst_param']}) {'ok' if ok else 'FAIL'} |", flush=True)
    if failed:
        print(f"FAILED (tolerance {tol:g}): {', '.join(failed)}")
        return 1
    print(f"all agree within {tol:g} ({args.dtype})")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NNLANG_DATA_DIR",
                          str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    sys.exit(main())
