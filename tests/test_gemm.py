"""The numba kernel's matrix product: every tile height, padding, strides and accumulation."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from wavekit.generation.gemm import MAX_ROWS, PANEL, gemm_panels, pack_panels, padded


@numba.njit
def _gemm(a, rows, depth, panels, c):
    gemm_panels(a, rows, depth, panels, c)


@pytest.mark.parametrize("rows", range(1, 2 * MAX_ROWS + 2))
def test_every_tile_height_matches_numpy(rows):
    rng = np.random.default_rng(rows)
    depth, n = 37, 50  # depth shorter than the row stride, N not a whole number of panels
    a = rng.standard_normal((rows + 3, depth + 5)).astype(np.float32)
    w = rng.standard_normal((n, depth)).astype(np.float32)
    c = rng.standard_normal((rows + 3, padded(n) + 16)).astype(np.float32)
    expected = c.astype(np.float64)
    expected[:rows, :n] += a[:rows, :depth].astype(np.float64) @ w.T.astype(np.float64)
    _gemm(a, rows, depth, pack_panels(w), c)
    np.testing.assert_allclose(c[:rows, :n], expected[:rows, :n], rtol=1e-5, atol=1e-5)
    assert np.array_equal(c[rows:], expected[rows:].astype(np.float32))  # rows past `rows`: untouched
    assert np.array_equal(c[:, n:padded(n)], expected[:, n:padded(n)].astype(np.float32))  # padding adds zeros
    assert np.array_equal(c[:, padded(n) :], expected[:, padded(n) :].astype(np.float32))  # past the panels


def test_rows_are_independent_of_their_tile():
    """A row's result does not depend on which other rows share its tile (bit for bit)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((9, 64)).astype(np.float32)
    panels = pack_panels(rng.standard_normal((32, 64)).astype(np.float32))
    together = np.zeros((9, 32), np.float32)
    _gemm(a, 9, 64, panels, together)
    for r in range(9):
        alone = np.zeros((1, 32), np.float32)
        _gemm(np.ascontiguousarray(a[r : r + 1]), 1, 64, panels, alone)
        assert np.array_equal(alone[0], together[r]), r


def test_pack_panels_layout():
    w = np.arange(3 * 20 * 4, dtype=np.float32).reshape(3, 20, 4)  # [lead, N, K]
    panels = pack_panels(w)
    assert panels.shape == (3, 2, 4, PANEL) and panels.flags.c_contiguous
    assert np.array_equal(panels[1, 0, 2], w[1, :PANEL, 2])  # panel q, depth k: W[q*16 : q*16 + 16, k]
    assert np.array_equal(panels[2, 1, 3, :4], w[2, PANEL:, 3])
    assert not panels[:, 1, :, 4:].any()  # zero padding


def test_zero_depth_adds_nothing():
    c = np.ones((2, PANEL), np.float32)
    _gemm(np.zeros((2, 0), np.float32), 2, 0, pack_panels(np.zeros((PANEL, 0), np.float32)), c)
    assert np.array_equal(c, np.ones((2, PANEL), np.float32))
