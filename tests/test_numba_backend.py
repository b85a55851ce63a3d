"""The numba kernel's vectorizable exp, sigmoid and tanh against float64 references."""

from __future__ import annotations

import numba
import numpy as np

from wavekit.generation.numba_backend import _exp, _inverse_cdf, _sigmoid, _tanh


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


def test_exp_underflows_to_zero_and_saturates_instead_of_overflowing():
    got = _apply(0, np.array([-1e4, -100.0, -88.0, 100.0, 1e4], np.float32))
    assert got[:3].tolist() == [0.0, 0.0, 0.0] and got[3] == got[4] > 1e38 and np.isfinite(got).all()


def test_sigmoid_and_tanh_within_2e7():
    x = np.concatenate([np.linspace(-30, 30, 600_001), [-1e4, 1e4]]).astype(np.float32)
    wide = x.astype(np.float64)
    with np.errstate(over="ignore"):
        sigmoid = 1 / (1 + np.exp(-wide))
    assert np.abs(_apply(1, x) - sigmoid).max() < 2e-7
    assert np.abs(_apply(2, x) - np.tanh(wide)).max() < 2e-7
    assert _apply(2, np.array([1e4, -1e4], np.float32)).tolist() == [1.0, -1.0]


def test_inverse_cdf_skips_zero_probability_bins_like_the_reference():
    """Bins whose exp underflows have probability 0 and are never drawn, even at u = 0, as in
    `MuLawCategorical.sample_from_uniform` (a clamped exp would give them ~1e-38 and draw bin 0)."""
    logits = np.full(8, -1e4, np.float32)
    logits[2:6] = [0.0, 1.0, -1.0, 0.5]
    scratch = np.empty(8, np.float32)
    drawn = [_inverse_cdf(logits, 0, 8, np.float32(1.0), np.float32(u), scratch) for u in (0.0, 1.0 - 2**-24)]
    assert drawn == [2, 5]
