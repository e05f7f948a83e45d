"""Frozen weights (`trainable = false` on a layer, a `param` or a block call): no gradient, no
update, no decay, and counted as non-trainable."""
from __future__ import annotations

import numpy as np
import pytest

import nnlang
from nnlang.errors import NNError
from nnlang.frontend.fmt import format_source
from nnlang.ir.summary import summarize

MODEL = """
block enc(x) {{
  h = conv2d(x, 3, 3) |> relu
  return h
}}
model F {{
  input x: float32[batch, 1, 5, 5]
  input y: int32[batch]
  param s: float32[3, 3] = ones trainable = false
  e = enc(x{enc})
  f = flatten(e)
  a = dense(f, 3{dense})
  logits = a @ s
  loss cross_entropy(logits, y)
}}
train F {{ optimizer = {opt}  batch = 4{l2} }}
"""


def source(opt="sgd(lr = 0.1)", l2="", enc=", trainable = false", dense=""):
    return MODEL.format(opt=opt, l2=l2, enc=enc, dense=dense)


def feeds():
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(4, 1, 5, 5)).astype(np.float32),
            "y": np.array([0, 1, 2, 1], np.int32)}


@pytest.mark.parametrize("opt,l2", [("sgd(lr = 0.1)", "  l2 = 0.5"),
                                    ("adamw(lr = 0.05, weight_decay = 0.5)", "")])
def test_frozen_weights_stay_bit_identical(opt, l2):
    net = nnlang.compile(source(opt, l2), backend="reference", seed=1)
    before = net.parameters()
    for _ in range(3):
        net.train_step(feeds())
    after = net.parameters()
    for name in ("e.h.weight", "e.h.bias", "s"):
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    for name in ("a.weight", "a.bias"):
        assert not np.array_equal(after[name], before[name]), name


def test_backward_has_no_gradient_for_frozen_conv():
    def conv_backward(enc):
        net = nnlang.compile(source(enc=enc), backend="reference")
        lines = nnlang.emit(net, "backward").splitlines()
        grads = sorted(net.graph("train").grads)
        return [ln for ln in lines if "[bwd]" in ln and ln.endswith("e.h @3")], grads

    frozen, frozen_grads = conv_backward(", trainable = false")
    free, free_grads = conv_backward("")
    assert any("matmul" in ln for ln in free)       # the conv's weight gradient, when trained
    assert frozen == []
    assert frozen_grads == ["a.bias", "a.weight"]
    assert free_grads == ["a.bias", "a.weight", "e.h.bias", "e.h.weight"]


def test_check_counts_frozen_as_non_trainable():
    program = nnlang.load(source(dense=", trainable = false"))
    s = summarize(program)
    frozen = 3 * 9 + 3 + 9 + 27 * 3 + 3       # conv, s, dense
    assert (s.total_params, s.non_trainable_params) == (frozen, frozen)
    assert s.trainable_params == 0


def test_param_option_formats_back():
    text = source()
    assert "ones trainable = false" in format_source(text)
    assert format_source(format_source(text)) == format_source(text)


@pytest.mark.parametrize("enc,dense,words", [
    (', trainable = "no"', "", ["trainable must be true or false", 'got "no"', ":10:"]),
    ("", ", trainable = 0", ["trainable must be true or false", ":12:"]),
])
def test_bad_trainable_value(enc, dense, words):
    with pytest.raises(NNError) as err:
        nnlang.load(source(enc=enc, dense=dense))
    text = err.value.render()
    for w in words:
        assert w in text, (w, text)


def test_op_without_weights_refuses_trainable():
    with pytest.raises(NNError, match="trainable"):
        nnlang.load(source().replace("flatten(e)", "flatten(e, trainable = false)"))


def test_shared_layer_must_agree_on_trainable():
    text = source(enc="").replace("logits = a @ s", "b = dense(f, 3, share = a, trainable = false)"
                                  "\n  logits = (a + b) @ s")
    with pytest.raises(NNError, match="shared"):
        nnlang.load(text)


def test_clip_norm_on_a_model_whose_weights_are_all_frozen():
    """The hint said to give the model a layer with weights, which it has: they are frozen."""
    text = source(dense=", trainable = false", l2="  clip_norm = 1.0")
    with pytest.raises(NNError) as err:
        nnlang.load(text)
    msg = err.value.render()
    assert "no trainable weights" in msg and "every weight is frozen" in msg, msg
    assert "give the model a layer with weights" not in msg, msg


def test_a_model_whose_weights_are_all_frozen_is_warned_about():
    """Every weight frozen trained nothing without a word (PyTorch's optimizer refuses an
    empty parameter list; Keras warns): a warning at the train section, else at the first
    weight; none while one layer trains."""
    every = "every weight of model 'F' is frozen (trainable = false): training would change"
    warned = [w.render() for w in nnlang.load(source(dense=", trainable = false")).warnings]
    assert any(every in w and "<string>:16:1:" in w for w in warned), warned
    bare = source(dense=", trainable = false").split("train F")[0]
    warned = [w.render() for w in nnlang.load(bare).warnings]
    assert any(every in w and "<string>:9:3:" in w for w in warned), warned
    assert not any(every in w.message for w in nnlang.load(source()).warnings)


BN = """
block backbone(x) {{
  h = conv2d(x, 3, 3) |> batch_norm |> relu
  return h
}}
model B {{
  input x: float32[batch, 1, 5, 5]
  input y: int32[batch]
  e = backbone(x{enc})
  logits = dense(flatten(e), 3)
  loss cross_entropy(logits, y)
}}
train B {{ optimizer = sgd(lr = 0.1)  batch = 4 }}
"""


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_a_frozen_batch_norm_keeps_its_statistics_and_runs_as_in_evaluation(backend):
    """Inside a frozen block, batch_norm's running statistics moved to the fine-tuning data, so
    the frozen backbone computed something else after training though its weights were
    bit-identical. Frozen, it runs with its running statistics, as Keras' does."""
    stats = ("e.h.running_mean", "e.h.running_var")
    net = nnlang.compile(BN.format(enc=", trainable = false"), backend=backend, seed=1)
    rng = np.random.default_rng(2)
    state = net.parameters()
    for k in stats:     # statistics that are not the batch's, as a trained backbone's are
        state[k] = rng.uniform(0.5, 2.0, state[k].shape).astype(np.float32)
    net.load_state_dict(state)
    before = net.parameters()
    evaluated = net.evaluate(feeds())["cross_entropy"]
    trained = net.train_step(feeds())   # the loss of the step, before its update
    np.testing.assert_allclose(trained, evaluated, rtol=1e-6)
    net.train_step(feeds())
    after = net.parameters()
    for k in (*stats, "e.conv2d.weight", "e.h.gamma", "e.h.beta"):
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert not np.array_equal(after["logits.weight"], before["logits.weight"])
    free = nnlang.compile(BN.format(enc=""), backend=backend, seed=1)
    free.train_step(feeds())       # not frozen: the batch's statistics, folded in
    assert not np.array_equal(free.parameters()["e.h.running_mean"],
                              nnlang.compile(BN.format(enc=""), backend=backend,
                                             seed=1).parameters()["e.h.running_mean"])


UNREACHED = """
model U {{
  input x: float32[batch, 6]
  input y: float32[batch, 1]
  h = dense(x, 5) |> tanh{sg}
  unused = dense(x, 3)
  out = dense(h, 1)
  loss mse(out, y)
}}
train U {{ optimizer = {opt}  batch = 4 }}
"""


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("opt", ["adamw(lr = 0.05, weight_decay = 0.5)",
                                 "sgd(lr = 0.1, momentum = 0.9, weight_decay = 0.5)"])
def test_weights_no_loss_reaches_are_not_decayed(backend, opt):
    """A layer whose value nothing uses, and a backbone behind stop_gradient: PyTorch's
    optimizers skip a parameter whose .grad is None (no decay), Keras' a None gradient; here
    weight decay shrank them. The reached head still follows its own update rule (numpy)."""
    net = nnlang.compile(UNREACHED.format(sg=" |> stop_gradient", opt=opt), backend=backend,
                         seed=2)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 6)).astype(np.float32)
    y = rng.normal(size=(4, 1)).astype(np.float32)
    names = sorted(net.state_dict())
    before = net.parameters()
    h = np.tanh(x @ before["h.weight"] + before["h.bias"])
    out = h @ before["out.weight"] + before["out.bias"]
    g_w = h.T @ (2 * (out - y) / out.size)
    net.train_step({"x": x, "y": y})
    after = net.parameters()
    for name in ("h.weight", "h.bias", "unused.weight", "unused.bias"):
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    w = before["out.weight"]
    if opt.startswith("adamw"):   # first AdamW step: decay, then -lr * sign-like m/sqrt(v)
        want = w * (1 - 0.05 * 0.5) - 0.05 * g_w / (np.abs(g_w) + 1e-8)
    else:                         # torch SGD: g + wd * w, momentum buffer = that at step 1
        want = w - 0.1 * (g_w + 0.5 * w)
    np.testing.assert_allclose(after["out.weight"], want, rtol=1e-4, atol=1e-6)
    assert sorted(net.state_dict()) == names   # the optimizer's slots are all still there


def test_weights_no_loss_reaches_are_pytorchs_skipped_parameters():
    torch = pytest.importorskip("torch")
    net = nnlang.compile(UNREACHED.format(sg=" |> stop_gradient",
                                          opt="adamw(lr = 0.05, weight_decay = 0.5)"),
                         backend="reference", dtype="float64", seed=2)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in net.parameters().items()}
    opt = torch.optim.AdamW(p.values(), lr=0.05, weight_decay=0.5)
    rng = np.random.default_rng(3)
    for _ in range(3):
        x, y = rng.normal(size=(4, 6)), rng.normal(size=(4, 1))
        net.train_step({"x": x, "y": y})
        opt.zero_grad(set_to_none=True)
        h = torch.tanh(torch.tensor(x) @ p["h.weight"] + p["h.bias"]).detach()
        loss = ((h @ p["out.weight"] + p["out.bias"] - torch.tensor(y)) ** 2).mean()
        loss.backward()
        opt.step()
    for k, v in net.parameters().items():
        np.testing.assert_allclose(v, p[k].detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=k)
