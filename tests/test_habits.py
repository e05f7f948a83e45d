"""Keras' and PyTorch's spellings, swept: each gets the nnlang spelling, or a hint that says
what to write instead (not a bare 'unknown' with the signature, nor a wrong guess by letters:
selu is not elu, nadam is not adam, shuffle is not schedule). The formulas those hints give
for activations, losses and metrics nnlang has no op for are run here against PyTorch and an
independent numpy.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

import nnlang
from nnlang.errors import NNError
from nnlang.ops.losses import WRITTEN_WITH_OPS as LOSSES_WITH_OPS
from nnlang.ops.nn import WRITTEN_WITH_OPS as ACTIVATIONS_WITH_OPS
from nnlang.passes.decompose import decompose
from nnlang.runtime.interpret import interpret

_MODEL = """model M {
  input x: float32[batch, 8]
  input seq: float32[batch, 5, 8]
  input img: float32[batch, 3, 8, 8]
  input tok: int32[batch, 5]
  input label: int32[batch]
  input yb: float32[batch, 4]
  %s
}
"""


def _hint(body: str, train: str | None = None) -> str:
    src = _MODEL % body + (f"train M {{\n  {train}\n}}\n" if train else "")
    with pytest.raises(NNError) as err:
        nnlang.load(src)
    return err.value.hint or ""


# (a line of the model, words its hint must hold): each hint was the whole signature, or a
# misleading guess by letters, before
LAYER_OPTIONS = [
    ('output y = dense(x, 4, kernel_initializer = "he_normal")', ["'init'"]),
    ('output y = dense(x, 4, kernel_regularizer = "l2")', ["l2 = 1e-4", "l2_on"]),
    ('output y = dense(x, 4, in_features = 8)', ["read from its shape"]),
    ('output y = conv2d(img, 4, 3, out_channels = 4)', ["'filters'"]),
    ('output y = conv2d(img, 4, 3, data_format = "channels_last")', ["channels_last = true"]),
    ('output y = conv2d(img, 4, 3, activation = "relu")', ["|> relu"]),
    ('output y = conv2d(img, 4, 3, padding_mode = "reflect")', ["zeros"]),
    ('output y = max_pool2d(img, kernel_size = 2)', ["'size'"]),
    ('output y = avg_pool2d(img, 3, count_include_pad = false)',
     ["count_include_pad = true", "real cells"]),
    ('output y = max_pool2d(img, 3, ceil_mode = true)', ["padding = [0, 1, 0, 1]"]),
    ('output y = dropout(x, 0.2, noise_shape = [1, 8])', ["x * dropout(", "* 0 + 1, rate)"]),
    ('output y = embedding(tok, 100, 8, mask_zero = true)', ["mask = tokens"]),
    ('output y = embedding(tok, 100, 8, padding_idx = 0)',
     ["embedding(tok, 100, 8) *", "tok != 0"]),
    # padding masks: sample_weight was "did you mean 'weight'?" (per-class weights), the
    # others the bare signature
    ('output y = cross_entropy(dense(x, 3), label, sample_weight = yb[:, 0])',
     ["sum(per_row * w)", "ignore_index"]),
    ('output y = cross_entropy(dense(x, 3), label, mask = label != 0)',
     ["ignore_index = <the pads' label>", "maximum(sum(keep"]),
    ('output y = mse(yb, yb, ignore_index = 0)', ["keep = cast(target !=", "sum(keep), 1.0)"]),
    ('output y = mean(seq, axis = 1, mask = tok != 0)', ["sum(x * keep, axis = a)"]),
    ('output y = softmax(seq, mask = seq > 0)', ["softmax(where(mask, x, -1e9))"]),
    ('output y = lstm(seq, 4, bias = false)', ["always have biases"]),
    ('output y = gru(seq, 4, unit_forget_bias = true)', ["only lstm"]),
    ('output y = batch_norm(x, axis = -1)', ["axis 1", "permute(x, [0, 3, 1, 2])"]),
    ('output y = batch_norm(x, affine = false)', ["always learned"]),
    ('output y = layer_norm(x, elementwise_affine = false)', ["sqrt(var(x"]),
    ('output y = multi_head_attention(seq, heads = 2, key_dim = 4)', ["dim = heads * key_dim"]),
    ('output y = multi_head_attention(seq, heads = 2, attn_mask = seq)',
     ["key_padding_mask", "causal = true"]),
    ('output y = multi_head_attention(seq, heads = 2, use_causal_mask = true)', ["'causal'"]),
    ('output y = multi_head_attention(seq, heads = 2, need_weights = false)', ["output alone"]),
    ('output y = multi_head_attention(seq, heads = 2, embed_dim = 8)', ["'dim'"]),
    ('output y = permute(img, dims = [0, 2, 3, 1])', ["'perm'"]),
    ('output y = transpose(seq, axes = [0, 2, 1])', ["'perm'"]),
    ('output y = clip(x, min = 0.0, max = 1.0)', ["'lo'"]),
    ('output y = one_hot(label, num_classes = 4)', ["'depth'"]),
    ('output y = argmax(x, axis = 1, keepdim = true)', ["unsqueeze"]),
    ('output y = mae(dense(x, 4), yb, reduction = "sum")', ["count it averages over"]),
    ('output y = dense(x, 4, activation = "selu")', ["elu(h, alpha = 1.67"]),
    ('output y = dense(x, 4, activation = "none")', ["leave activation out"]),
    # Keras' Reshape leaves the batch axis out of target_shape; nnlang's shape has it
    ('output y = reshape(seq, target_shape = [40])', ["'shape'", "reshape(x, [batch, 40])"]),
    # torch.gather picks along dim per element; nnlang's gather takes rows of axis 0
    ('output y = gather(seq, tok, dim = 1)', ["rows", "one_hot(idx, depth = n)"]),
    ('output y = transpose(seq, perm = [0, 5, 1])', ["axis 5", "0 to 2"]),
    ('output y = transpose(seq, perm = [0, -1, 1])', ["perm = [0, 2, 1]"]),
    ('output y = transpose(seq, 0, 5)', ["axis 5 is out of range", "perm = [...]"]),
    ('output y = permute(seq, [0, 5, 1])', ["axis 5", "0 to 2"]),
]
OPS = [
    ("output y = selu(x)", ["1.0507009873554805 * elu(x"]),
    ("output y = softsign(x)", ["x / (1 + abs(x))"]),
    ("output y = hard_sigmoid(x)", ["minimum(1.0, x / 6 + 0.5)"]),
    ("output y = relu6(x)", ["maximum(0.0, minimum(6.0, x))", "gradient 0"]),
    ("output y = pad(x, [2, 0])", ['padding = "causal"', "padding = [lo, hi]"]),
    ("output y = Bidirectional(x)", ["bidirectional = true", "merge_mode", "backward h, c"]),
    ("output y = stack(x, x)", ["concat(unsqueeze(a, axis = 1)"]),
    ("output y = spatial_dropout2d(img, 0.2)", ["x * dropout("]),
    ("output y = BCEWithLogitsLoss(x, x)", ["'bce_with_logits'"]),
    ("output y = hinge(x, x)", ["relu(1 - y * p)"]),
    ("output y = poisson(x, x)", ["log(p + 1e-7)"]),
    ("output y = AUC(x, label)", ["nnlang predict"]),
    ("output y = sparse_categorical_accuracy(x, label)", ["'accuracy'"]),
    ("output y = identity(x)", ["y = x"]),
    ("output y = GroupNorm(img, 3)", ["mean(h, axis = -1"]),
    ("output y = group_norm(img, 3)", ["mean(h, axis = -1"]),
    ("output y = repeat_interleave(x, 2, dim = 1)", ["unsqueeze(x, axis = 2)"]),
    ("output y = poisson_nll_loss(x, x)", ["exp(p) - y * p"]),
    ("output y = ctc_loss(x, x)", ["not supported"]),
    ("output y = margin_ranking_loss(x, x, x)", ["relu(margin - y * (a - b))"]),
    ("output y = triplet_margin_loss(x, x, x)", ["sqrt(sum((a - p + 1e-6) ** 2"]),
    ("output y = focal_loss(x, x)", ["softplus(p) - y * p"]),
    ("output y = dice_loss(x, x)", ["2 * sum(p * y)"]),
    ("output y = rmse(x, x)", ["sqrt(mse(p, y))"]),
    ("output y = RootMeanSquaredError(x, x)", ["sqrt(mse(p, y))", "not the mean of"]),
    ("output y = r2(x, x)", ["sum((y - mean(y)) ** 2)", "nnlang predict"]),
    ("output y = R2Score(x, x)", ["sum((y - mean(y)) ** 2)"]),
    # PyTorch's loose positional dims: the call to write, for this tensor's rank
    ("output y = swapaxes(seq, 1, 2)",
     ["'swapaxes' is transpose", "transpose(seq, perm = [0, 2, 1])"]),
    ("output y = transpose(x, 0, 1)", ["transpose(x, perm = [1, 0])"]),
    ("output y = transpose(img, -1, 1)", ["transpose(img, perm = [0, 3, 2, 1])"]),
    ("output y = reshape(seq, batch, 5 * 8)", ["reshape(seq, [batch, 5 * 8])"]),
    ("output y = view(seq + 1, -1, 40)", ["reshape(seq + 1, [-1, 40])"]),
]
TRAIN = [
    ("optimizer = nadam", ["not supported", "adam"]),
    ("optimizer = adagrad", ["not supported"]),
    ("optimizer = adam(amsgrad = true)", ["no AMSGrad"]),
    ("optimizer = adam(betas = [0.9, 0.999])", ["beta1 = 0.9, beta2 = 0.999"]),
    ("optimizer = adam(clipnorm = 1.0)", ["clip_norm = 1.0"]),
    ("optimizer = rmsprop(rho = 0.9)", ["'alpha'"]),
    ("schedule = OneCycleLR", ["cosine(warmup = N)"]),
    ("schedule = CosineAnnealingWarmRestarts", ["no restarts"]),
    ("schedule = LinearLR", ["warmup = 100"]),
    ("schedule = warmup(100)", ["cosine(warmup = 100)"]),
    ("schedule = MultiStepLR", ["step(step_size = N"]),
    ("schedule = cosine(T_max = 10)", ["whole run"]),
    ("schedule = cosine(eta_min = 1e-5)", ["'min_lr'"]),
    ("schedule = plateau(min_delta = 0.01)", ["min_delta = 0"]),
    ("shuffle = true", ["shuffled every epoch"]),
    ("callbacks = [1]", ["early_stop = 3", "best.npz"]),
    ("patience = 3", ["early_stop = 3"]),
    ("restore_best_weights = true", ["best.npz"]),
    ("steps_per_epoch = 10", ["--max-steps"]),
    ("learning_rate = 0.01", ["'lr' here", "adam(lr = ...)"]),
    ("warmup_steps = 100", ["constant(warmup = ...)"]),
    ("random_seed = 1", ["'seed'"]),
    ("gradient_clip_val = 1.0", ["'clip_norm'"]),
]


@pytest.mark.parametrize("line, words", LAYER_OPTIONS + OPS, ids=lambda v: str(v)[:60])
def test_a_keras_or_pytorch_spelling_in_a_model_says_what_to_write(line, words):
    hint = _hint(line)
    assert all(w in hint for w in words), hint
    assert not hint.startswith(("parameters:", "see `nnlang ops`")), hint


@pytest.mark.parametrize("setting, words", TRAIN, ids=lambda v: str(v)[:60])
def test_a_keras_or_pytorch_spelling_in_the_train_section_says_what_to_write(setting, words):
    hint = _hint("y = dense(x, 4)\n  output y\n  loss mse(y, yb)", setting)
    assert all(w in hint for w in words), hint
    assert not hint.startswith(("settings:", "parameters:", "optimizers:", "schedules:")), hint


def test_keras_mode_auto_says_to_leave_mode_out():
    """mode = "auto" (Keras' EarlyStopping / ReduceLROnPlateau default) said only that it is
    not 'min' or 'max', in the file and from --set."""
    from nnlang.train.overrides import resolve
    src = _MODEL % "y = dense(x, 4)\n  output y\n  loss mse(y, yb)"
    with pytest.raises(NNError) as err:
        nnlang.load(src + 'train M {\n  val_split = 0.2\n  mode = "auto"\n}\n')
    with pytest.raises(NNError) as given:
        resolve(src, sets={"mode": "auto"})
    for e in (err, given):
        assert "leave mode out for Keras' \"auto\"" in e.value.render(), e.value.render()


def test_set_of_an_unknown_optimizer_gets_the_same_hint_as_the_file():
    from nnlang.frontend.train_config import TrainConfig
    from nnlang.train.overrides import apply_overrides
    with pytest.raises(NNError) as err:
        apply_overrides(TrainConfig(), {"optimizer": "nadam"})
    assert "not supported" in err.value.hint


# *** the formulas the hints give, run ***

def _run(expr: str, feeds: dict) -> np.ndarray:
    """`expr` (of x, or of p and y) as a model's output, decomposed and interpreted in float64."""
    inputs = "".join(f"  input {k}: float64[{', '.join(map(str, v.shape))}]\n"
                     if v.dtype.kind == "f" else
                     f"  input {k}: int32[{', '.join(map(str, v.shape))}]\n"
                     for k, v in feeds.items())
    prog = nnlang.load(f"model F(classes = 5, k = 2) {{\n{inputs}  output out = {expr}\n}}\n")
    low = decompose(prog.graph, training=False)
    return interpret(low, feeds, want={"out": low.outputs["out"]})["out"]


def _formula(text: str) -> str:
    return text.split("; ")[0]   # NOTE: the hint's words after the formula, as "y one-hot"


X = np.linspace(-7.5, 7.5, 61).reshape(1, -1)   # both sides of every kink (0, +-3, 6)

ACTIVATIONS_NUMPY = {
    "selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x)),
    "hard_sigmoid": lambda x: np.minimum(np.maximum(x + 3, 0), 6) / 6,
    "hard_swish": lambda x: x * np.minimum(np.maximum(x + 3, 0), 6) / 6,
    "relu6": lambda x: np.minimum(np.maximum(x, 0), 6),
    "hard_tanh": lambda x: np.minimum(np.maximum(x, -1), 1),
    "softsign": lambda x: x / (1 + np.abs(x)),
    "mish": lambda x: x * np.tanh(np.log1p(np.exp(x))),
    "log_sigmoid": lambda x: -np.log1p(np.exp(-x)),
    "exponential": np.exp,
}
ACTIVATIONS_TORCH = {
    "selu": "selu", "hard_sigmoid": "hardsigmoid", "hard_swish": "hardswish", "relu6": "relu6",
    "hard_tanh": "hardtanh", "softsign": "softsign", "mish": "mish",
    "log_sigmoid": "logsigmoid",
}


@pytest.mark.parametrize("name", sorted(set(ACTIVATIONS_NUMPY) | set(ACTIVATIONS_WITH_OPS)))
def test_an_activation_written_with_ops_is_that_activation(name):
    """Every formula of nn.WRITTEN_WITH_OPS (an alias too) against numpy, and PyTorch."""
    ours = {v: k for k, v in ACTIVATIONS_WITH_OPS.items() if k in ACTIVATIONS_NUMPY}
    canonical = ours[ACTIVATIONS_WITH_OPS[name]]
    got = _run(_formula(ACTIVATIONS_WITH_OPS[name]), {"x": X})
    np.testing.assert_allclose(got, ACTIVATIONS_NUMPY[canonical](X), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS_TORCH))
def test_an_activation_written_with_ops_matches_pytorch(name):
    torch = pytest.importorskip("torch")
    want = getattr(torch.nn.functional, ACTIVATIONS_TORCH[name])(torch.tensor(X)).numpy()
    got = _run(_formula(ACTIVATIONS_WITH_OPS[name]), {"x": X})
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# PyTorch's backward of its piecewise activations (aten's *_backward), written out in numpy
ACTIVATION_GRADS_NUMPY = {
    "relu6": lambda x: ((x > 0) & (x < 6)).astype(float),
    "hard_tanh": lambda x: ((x > -1) & (x < 1)).astype(float),
    "hard_sigmoid": lambda x: ((x > -3) & (x < 3)) / 6.0,
    "hard_swish": lambda x: np.where(x <= -3, 0.0, np.where(x < 3, x / 3 + 0.5, 1.0)),
}


def _grad(expr: str, x: np.ndarray) -> np.ndarray:
    net = nnlang.compile(f"model F {{\n  input x: float64[batch, {x.shape[1]}]\n"
                         f"  loss sum({expr})\n}}\n", backend="reference", dtype="float64",
                         batch=x.shape[0])
    return net.gradients({"x": x}, inputs=("x",))["x"]


@pytest.mark.parametrize("name", sorted(ACTIVATION_GRADS_NUMPY))
def test_an_activation_written_with_ops_has_pytorchs_gradient_at_its_kinks(name):
    """relu6's hint was clip(x, 0, 6), whose gradient at x = 0 and 6 is 1 (torch.clamp's);
    torch 2.13's relu6 (hardtanh) gives 0 there, hardtanh and hardsigmoid 0 at theirs,
    hardswish 0 at -3 and 1 at 3. X holds every kink exactly; numpy of those, and PyTorch's
    autograd."""
    got = _grad(_formula(ACTIVATIONS_WITH_OPS[name]), X)
    np.testing.assert_allclose(got, ACTIVATION_GRADS_NUMPY[name](X), rtol=1e-12, atol=1e-12)
    torch = pytest.importorskip("torch")
    x = torch.tensor(X, requires_grad=True)
    getattr(torch.nn.functional, ACTIVATIONS_TORCH[name])(x).sum().backward()
    # NOTE: torch's float64 hardsigmoid backward multiplies by a float32 1/6
    np.testing.assert_allclose(got, x.grad.numpy(), rtol=1e-7, atol=1e-12)


def _loss_feeds(name: str) -> dict:
    rng = np.random.default_rng(3)
    p = rng.normal(size=(6, 5))
    if "hinge" in name and "categorical" not in name:
        return {"p": p, "y": rng.choice([-1.0, 1.0], size=(6, 5))}
    if "categorical" in name:
        return {"p": p, "y": np.eye(5)[rng.integers(0, 5, 6)]}
    if name == "top_k_accuracy":
        return {"p": p, "y": rng.integers(0, 5, 6).astype(np.int32)}
    if name in ("focal_loss", "dice"):
        return {"p": p if name == "focal_loss" else rng.uniform(0, 1, (6, 5)),
                "y": rng.integers(0, 2, (6, 5)).astype(np.float64)}
    return {"p": rng.uniform(0.5, 3.0, (6, 5)), "y": rng.uniform(0.5, 3.0, (6, 5))}


def _keras_losses(name, p, y):
    """Keras' definitions (keras/src/losses/losses.py, metrics), written out in numpy."""
    if name == "hinge":
        return np.mean(np.maximum(1 - y * p, 0))
    if name == "squared_hinge":
        return np.mean(np.maximum(1 - y * p, 0) ** 2)
    if name == "categorical_hinge":
        pos, neg = np.sum(y * p, -1), np.max((1 - y) * p, -1)
        return np.mean(np.maximum(neg - pos + 1, 0))
    if name == "cosine_similarity":
        unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
        return -np.mean(np.sum(unit(y) * unit(p), -1))
    if name == "poisson":
        return np.mean(p - y * np.log(p + 1e-7))
    if name == "log_cosh":
        return np.mean(np.log(np.cosh(p - y)))
    if name == "mean_squared_logarithmic_error":
        return np.mean((np.log1p(p) - np.log1p(y)) ** 2)
    if name == "mean_absolute_percentage_error":
        return 100 * np.mean(np.abs((y - p) / y))
    if name == "categorical_accuracy":
        return np.mean(np.argmax(p, -1) == np.argmax(y, -1))
    if name == "top_k_accuracy":
        top = np.argsort(-p, axis=-1)[:, :2]
        return np.mean([y[i] in top[i] for i in range(len(y))])
    if name == "poisson_nll_loss":   # PyTorch's log_input = true
        return np.mean(np.exp(p) - y * p)
    if name == "focal_loss":   # torchvision's sigmoid_focal_loss, written out
        prob = 1 / (1 + np.exp(-p))
        ce = -(y * np.log(prob) + (1 - y) * np.log(1 - prob))
        p_t = prob * y + (1 - prob) * (1 - y)
        return np.mean((0.25 * y + 0.75 * (1 - y)) * ce * (1 - p_t) ** 2)
    if name == "dice":
        return 1 - 2 * np.sum(p * y) / (np.sum(p) + np.sum(y) + 1e-7)
    if name == "rmse":
        return np.sqrt(np.mean((p - y) ** 2))
    if name == "r2":
        return 1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2)
    raise KeyError(name)


@pytest.mark.parametrize("name", sorted(LOSSES_WITH_OPS))
def test_a_loss_or_metric_written_with_ops_is_keras_own(name):
    canonical = {v: k for k, v in LOSSES_WITH_OPS.items() if k in _CANONICAL}
    key = canonical[LOSSES_WITH_OPS[name]]
    feeds = _loss_feeds(key)
    got = float(_run(_formula(LOSSES_WITH_OPS[name]), feeds))
    tol = 1e-6 if "accuracy" in key else 1e-9   # NOTE: counted in float32
    assert math.isclose(got, _keras_losses(key, **feeds), rel_tol=tol, abs_tol=1e-12)


_CANONICAL = ("hinge", "squared_hinge", "categorical_hinge", "cosine_similarity", "poisson",
              "log_cosh", "mean_squared_logarithmic_error", "mean_absolute_percentage_error",
              "categorical_accuracy", "top_k_accuracy", "poisson_nll_loss", "focal_loss", "dice",
              "rmse", "r2")


def test_cosine_similarity_and_poisson_written_with_ops_match_pytorch():
    torch = pytest.importorskip("torch")
    f = pytest.importorskip("torch.nn.functional")
    feeds = _loss_feeds("poisson")
    p, y = torch.tensor(feeds["p"]), torch.tensor(feeds["y"])
    cos = float(_run(_formula(LOSSES_WITH_OPS["cosine_similarity"]), feeds))
    assert math.isclose(cos, -float(f.cosine_similarity(p, y, dim=-1).mean()), rel_tol=1e-9)
    poisson = float(_run(_formula(LOSSES_WITH_OPS["poisson"]), feeds))
    want = float(f.poisson_nll_loss(p, y, log_input=False, eps=1e-7, full=False))
    assert math.isclose(poisson, want, rel_tol=1e-6)
    del torch


def test_the_shared_dropout_mask_drops_whole_channels_in_training_only():
    """dropout's noise_shape hint (and SpatialDropout2D's): one draw per (example, channel),
    scaled by 1/(1 - rate) in training, the identity in evaluation."""
    from nnlang.ops import registry
    written = registry.get("dropout").habits["noise_shape"].split("broadcast: ")[1]
    src = f"model M {{\n  input x: float32[4, 6, 3, 3]\n  output y = {written}\n}}\n"
    src = src.replace("rate)", "0.5)")
    g = nnlang.load(src).graph
    x = np.random.default_rng(0).uniform(1, 2, (4, 6, 3, 3)).astype(np.float32)
    for training in (True, False):
        low = decompose(g, training=training)
        y = interpret(low, {"x": x, "_rng": 3}, want={"y": low.outputs["y"]})["y"]
        ratio = (y / x).reshape(4, 6, 9)
        assert np.all(ratio == ratio[:, :, :1]), "a channel is not kept or dropped whole"
        if training:
            assert set(np.unique(ratio)) == {0.0, 2.0}
        else:
            np.testing.assert_array_equal(y, x)


def test_avg_pool_padding_same_averages_the_real_cells_as_keras():
    """padding = "same" is Keras' spelling (PyTorch's pools have none) and Keras averages over
    the cells inside x: on ones every output is 1. The padded corners counted as zeros (4/9)."""
    x = np.random.default_rng(2).uniform(1, 2, (2, 3, 5, 6))
    got = _run("avg_pool2d(x, 3, stride = 1, padding = \"same\")", {"x": x})
    ones = _run("avg_pool2d(x, 3, stride = 2, padding = \"same\")", {"x": np.ones((1, 1, 5, 6))})
    np.testing.assert_allclose(ones, 1.0, rtol=1e-12)
    want = np.zeros_like(x)   # numpy: each window's cells inside x, averaged
    for i in range(5):
        for j in range(6):
            want[:, :, i, j] = x[:, :, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].mean((2, 3))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    torch = pytest.importorskip("torch")
    twin = torch.nn.functional.avg_pool2d(torch.tensor(x), 3, 1, 1, count_include_pad=False)
    np.testing.assert_allclose(got, twin.numpy(), rtol=1e-12)


@pytest.mark.parametrize("pad", [0, 1, -1])
def test_the_padding_idx_hint_zeroes_the_pad_id_it_was_given(pad):
    """PyTorch's padding_idx = k (fairseq and RoBERTa pad with 1; a negative k counts from the
    end of the vocabulary): its hint, written as it says, gives zeros at id k and no gradient
    to row k, and row k alone. The hint said `tokens != 0` whatever k was, so following it
    zeroed the real token 0 and trained the pads' row."""
    hint = _hint(f"output y = embedding(tok, 10, 8, padding_idx = {pad})")
    written = hint.split("yourself: ")[1]
    assert "embedding(tok, 10, 8)" in written, written   # the call as written, runnable
    src = (_MODEL % f"e = {written}\n  output y = e\n  loss sum(e * yb)"
           ).replace("input yb: float32[batch, 4]", "input yb: float32[batch, 5, 8]")
    net = nnlang.compile(src, backend="reference", batch=3, seed=0)
    tok = np.array([[0, 1, 9, 2, 1], [9, 9, 0, 3, 4], [5, 1, 1, 0, 9]], np.int32)
    yb = np.random.default_rng(0).normal(size=(3, 5, 8)).astype(np.float32)
    feeds = {"tok": tok, "yb": yb}
    (name,) = net.parameters()
    w = net.parameters()[name]
    k = pad % 10
    want = np.where((tok == k)[..., None], 0.0, w[tok])   # numpy: PyTorch's padding_idx
    np.testing.assert_allclose(net.forward(feeds)["y"], want, rtol=1e-6)
    grad = np.zeros_like(w)
    np.add.at(grad, tok[tok != k], yb[tok != k])
    np.testing.assert_allclose(net.gradients(feeds)[name], grad, rtol=1e-5, atol=1e-6)
    assert not net.gradients(feeds)[name][k].any()


@pytest.mark.parametrize("size", [(8, 8), (7, 10)])
def test_the_ceil_mode_hint_is_pytorchs_ceil_mode(size):
    """max_pool's ceil_mode hint, its padding as written, gives PyTorch's ceil_mode = true: the
    windows of stride 2 from 0 while one starts inside x, each over the cells it covers. Its
    2-D padding = [0, 1] (one int per axis) padded the second axis on both sides: [3, 4]."""
    from nnlang.ops import registry
    pads = re.search(r"padding = (\[[^\]]*\])", registry.get("max_pool2d").habits["ceil_mode"])[1]
    x = np.random.default_rng(3).normal(size=(2, 3, *size))
    got = _run(f"max_pool2d(x, 3, stride = 2, padding = {pads})", {"x": x})
    assert got.shape[2:] == (-(-(size[0] - 3) // 2) + 1, -(-(size[1] - 3) // 2) + 1)
    rows, cols = (-(-(n - 3) // 2) + 1 for n in size)   # ceil((n - k) / s) + 1
    want = np.array([[x[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max((2, 3)) for j in range(cols)]
                     for i in range(rows)]).transpose(2, 3, 0, 1)
    np.testing.assert_array_equal(got, want)
    torch = pytest.importorskip("torch")
    twin = torch.nn.functional.max_pool2d(torch.tensor(x), 3, 2, ceil_mode=True)
    np.testing.assert_array_equal(got, twin.numpy())


def test_focal_and_poisson_nll_written_with_ops_match_pytorch():
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    feeds = _loss_feeds("focal_loss")
    p, y = torch.tensor(feeds["p"]), torch.tensor(feeds["y"])
    prob = torch.sigmoid(p)   # torchvision.ops.sigmoid_focal_loss, as it is written there
    ce = f.binary_cross_entropy_with_logits(p, y, reduction="none")
    p_t = prob * y + (1 - prob) * (1 - y)
    want = ((0.25 * y + 0.75 * (1 - y)) * ce * (1 - p_t) ** 2).mean()
    got = float(_run(_formula(LOSSES_WITH_OPS["focal_loss"]), feeds))
    assert math.isclose(got, float(want), rel_tol=1e-9)
    got = float(_run(_formula(LOSSES_WITH_OPS["poisson_nll_loss"]), feeds))
    assert math.isclose(got, float(f.poisson_nll_loss(p, y, log_input=True)), rel_tol=1e-9)


def _written(name: str) -> str:
    """The formula of WRITTEN_OTHERWISE[name]: the text after its first ": ", to the last " ("."""
    from nnlang.frontend.calls import WRITTEN_OTHERWISE
    return WRITTEN_OTHERWISE[name].split(": ", 1)[1].rsplit(" (", 1)[0]


def test_group_norm_written_with_ops_is_pytorch_group_norm():
    """The hint's whole formula, its weight declarations as written, with weights that are not
    the identity: it left out the per-channel scale and shift PyTorch's GroupNorm has by
    default (affine=True)."""
    from nnlang.frontend.calls import WRITTEN_OTHERWISE
    from nnlang.runtime.interpret import interpret
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 6, 3, 4)).astype(np.float32)
    weights = {"scale": rng.normal(size=(6, 1, 1)), "shift": rng.normal(size=(6, 1, 1))}
    hint = WRITTEN_OTHERWISE["GroupNorm"]
    params = "".join(f"  {p}\n" for p in re.findall(r"`(param [^`]+)`", hint))
    text = _written("GroupNorm").split(", then ")[1].replace("[batch, C, H, W]", "[2, 6, 3, 4]")
    text = re.sub(r"\bh\b", "reshape(x, [2, 3, -1])", text)
    prog = nnlang.load(f"model F(C = 6) {{\n  input x: float32[2, 6, 3, 4]\n{params}"
                       f"  output out = {text}\n}}\n")
    assert sorted(prog.graph.params) == ["scale", "shift"]
    low = decompose(prog.graph, training=False)
    got = interpret(low, {"x": x}, weights, want={"out": low.outputs["out"]})["out"]
    g = x.astype(np.float64).reshape(2, 3, -1)   # numpy: each group's mean, population variance
    want = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5))
    want = want.reshape(x.shape) * weights["scale"] + weights["shift"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    torch = pytest.importorskip("torch")
    norm = torch.nn.GroupNorm(3, 6, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor(weights["scale"].reshape(6)))
        norm.bias.copy_(torch.tensor(weights["shift"].reshape(6)))
        twin = norm(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, twin, rtol=1e-5, atol=1e-5)


def test_repeat_interleave_and_gather_along_an_axis_written_with_ops():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 4))
    text = _written("repeat_interleave").split(" with r copies")[0]
    got = _run(text.replace(", ...", ", unsqueeze(x, axis = 2)").replace("batch", "2"), {"x": x})
    np.testing.assert_array_equal(got, np.repeat(x, 3, axis=1))   # numpy's repeat is torch's
    from nnlang.ops import registry
    seq, idx = rng.normal(size=(2, 5, 3)), rng.integers(0, 5, (2, 4)).astype(np.int32)
    formula = registry.get("gather").habits["dim"].split(": ")[1].split(" gives")[0]
    got = _run(formula.replace("depth = n", "depth = 5").replace("one_hot(idx, depth = 5)",
                                                                 "one_hot(idx, depth = 5, dtype "
                                                                 "= \"float64\")"),
               {"x": seq, "idx": idx})
    want = np.take_along_axis(seq, idx[:, :, None].repeat(3, axis=2), axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    torch = pytest.importorskip("torch")
    twin = torch.gather(torch.tensor(seq), 1, torch.tensor(idx, dtype=torch.int64)[:, :, None]
                        .expand(-1, -1, 3))
    np.testing.assert_allclose(got, twin.numpy(), rtol=1e-12)


def test_margin_ranking_and_triplet_losses_written_with_ops():
    rng = np.random.default_rng(6)
    a, b, n = (rng.normal(size=(6, 4)) for _ in range(3))
    y = rng.choice([-1.0, 1.0], size=(6, 4))
    rank = _written("margin_ranking_loss").replace("margin", "0.5")
    got = float(_run(rank, {"a": a, "b": b, "y": y}))
    assert math.isclose(got, np.mean(np.maximum(0, -y * (a - b) + 0.5)), rel_tol=1e-12)
    triplet = _written("triplet_margin_loss")
    got_t = float(_run(triplet, {"a": a, "p": b, "n": n}))
    dist = lambda u, v: np.sqrt(np.sum((u - v + 1e-6) ** 2, -1))  # noqa: E731
    assert math.isclose(got_t, np.mean(np.maximum(dist(a, b) - dist(a, n) + 1.0, 0)),
                        rel_tol=1e-12)
    torch = pytest.importorskip("torch")
    f, t = torch.nn.functional, torch.tensor
    assert math.isclose(got, float(f.margin_ranking_loss(t(a), t(b), t(y), margin=0.5)),
                        rel_tol=1e-12)
    assert math.isclose(got_t, float(f.triplet_margin_loss(t(a), t(b), t(n))), rel_tol=1e-9)
