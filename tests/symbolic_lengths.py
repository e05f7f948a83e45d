"""The check shared by the tests of nets whose length is a `symbol` (tests/ops/test_symbolic_*):
each length the symbolic net ran gives what a fresh net declared with that length as a number
gives, starting from the same weights and optimizer state."""
from __future__ import annotations

import numpy as np
import pytest

import nnlang


def assert_fresh_nets_agree(concrete, lengths, feeds, got: dict, seed: int, **compile_kw):
    """`got[n]`: (loss, forward output "out", parameters after the step) of the symbolic net
    at length n, stepped on feeds(n, k) and run forward on feeds(n, 10 + k) for the k-th
    length; `concrete(n)`: the source with the length n written as a number."""
    twin = nnlang.compile(concrete(lengths[0]), seed=seed, **compile_kw)
    for k, n in enumerate(lengths):
        fresh = nnlang.compile(concrete(n), seed=seed, **compile_kw)
        fresh.load_state_dict(twin.state_dict())  # the weights the symbolic net had here
        fresh.step = twin.step
        loss, out, params = got[n]
        assert fresh.train_step(feeds(n, k)) == pytest.approx(loss, rel=1e-5)
        np.testing.assert_allclose(fresh.forward(feeds(n, 10 + k))["out"], out, rtol=1e-5,
                                   atol=1e-6)
        for name, value in fresh.parameters().items():
            np.testing.assert_allclose(value, params[name], rtol=1e-5, atol=1e-6, err_msg=name)
        twin = fresh
