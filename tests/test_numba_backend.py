"""The numba kernel's vectorizable exp, sigmoid and tanh against float64 references."""

from __future__ import annotations

import numba
import numpy as np

from wavekit.generation.numba_backend import _exp, _sigmoid, _tanh


@numba.njit
def _apply(which, x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = _exp(x[i]) if which == 0 else _sigmoid(x[i]) if which == 1 else _tanh(x[i])
    return out


def test_exp_within_two_ulp():
    x = np.linspace(-87.0, 88.0, 1_000_003, dtype=np.float32)
    got = _apply(0, x).astype(np.float64)
    exact = np.exp(x.astype(np.float64))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert (np.abs(got - exact) <= 2 * ulp).all()


def test_exp_saturates_instead_of_overflowing():
    got = _apply(0, np.array([-1e4, -100.0, 100.0, 1e4], np.float32))
    assert np.isfinite(got).all() and got[0] == got[1] and 0 < got[0] < 1e-37 and got[2] == got[3] > 1e38


def test_sigmoid_and_tanh_within_2e7():
    x = np.concatenate([np.linspace(-30, 30, 600_001), [-1e4, 1e4]]).astype(np.float32)
    wide = x.astype(np.float64)
    with np.errstate(over="ignore"):
        sigmoid = 1 / (1 + np.exp(-wide))
    assert np.abs(_apply(1, x) - sigmoid).max() < 2e-7
    assert np.abs(_apply(2, x) - np.tanh(wide)).max() < 2e-7
    assert _apply(2, np.array([1e4, -1e4], np.float32)).tolist() == [1.0, -1.0]
