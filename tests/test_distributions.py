"""Tests for wavekit.distributions: normalisation, accuracy against float64 references,
numerical robustness, the documented inverse-CDF sampling rule and sample statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from scipy.special import expit
from scipy.stats import chisquare

from wavekit.distributions import DiscretizedLogisticMixture, MuLawCategorical


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _chisquare_pvalue(observed: np.ndarray, expected_probs: np.ndarray) -> float:
    """Chi-square p-value, pooling every bin with expected count < 5 into one cell."""
    expected = expected_probs / expected_probs.sum() * observed.sum()
    small = expected < 5
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        assert obs[-1] == 0
        obs, exp = obs[:-1], exp[:-1]
    return chisquare(obs, exp).pvalue


def _mixture_params(
    batch: int, k: int, mean: tuple[float, float], log_scale: tuple[float, float], seed: int
) -> torch.Tensor:
    g = _gen(seed)
    return torch.cat(
        [
            torch.randn(batch, k, generator=g) * 2,
            torch.empty(batch, k).uniform_(*mean, generator=g),
            torch.empty(batch, k).uniform_(*log_scale, generator=g),
        ],
        dim=1,
    )


def _all_bins_log_prob(dist, params: torch.Tensor) -> torch.Tensor:
    """log_prob of every bin centre for each row of ``params[P, C]`` -> ``[P, num_bins]``."""
    centers = dist.bin_centers()
    n = centers.numel()
    return dist.log_prob(params[:, :, None].expand(-1, -1, n), centers.expand(len(params), n))


def _reference_mixture_log_prob(
    params: torch.Tensor, k: torch.Tensor, bits: int, log_scale_min: float = -7.0
) -> np.ndarray:
    """Float64 log-probability of bin ``k[P]`` from logistic CDF differences."""
    p = params.double().numpy()
    kk = k.double().numpy()[:, None]
    m = p.shape[1] // 3
    logits, mu, log_s = p[:, :m], p[:, m : 2 * m], np.maximum(p[:, 2 * m :], log_scale_min)
    half = (2**bits - 1) / 2
    s = np.exp(log_s)
    upper = (kk / half - 1 + 0.5 / half - mu) / s
    lower = (kk / half - 1 - 0.5 / half - mu) / s
    middle = np.where(lower > 0, expit(-lower) - expit(-upper), expit(upper) - expit(lower))
    mass = np.where(kk == 0, expit(upper), np.where(kk == 2**bits - 1, expit(-lower), middle))
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return np.log((weights * mass).sum(axis=1))


# ---------------------------------------------------------------- mu-law categorical


def test_mulaw_log_prob_is_log_softmax_at_torchaudio_bin():
    dist = MuLawCategorical(256)
    g = _gen(0)
    logits = torch.randn(3, 256, 500, generator=g) * 3
    audio = torch.rand(3, 500, generator=g) * 2.2 - 1.1  # includes out-of-range values
    bins = AF.mu_law_encoding(audio.clamp(-1, 1), 256)
    expected = F.log_softmax(logits, dim=1).gather(1, bins[:, None]).squeeze(1)
    torch.testing.assert_close(dist.log_prob(logits, audio), expected)


def test_mulaw_bins_are_torchaudio_bins_and_normalised():
    dist = MuLawCategorical(256)
    centers = dist.bin_centers()
    assert dist.num_bins == 256 and centers.shape == (256,)
    torch.testing.assert_close(centers, AF.mu_law_decoding(torch.arange(256), 256))
    assert bool((centers[1:] > centers[:-1]).all())
    logits = torch.randn(4, 256, generator=_gen(1)) * 4
    log_p = _all_bins_log_prob(dist, logits)
    torch.testing.assert_close(log_p, F.log_softmax(logits, dim=1))
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(4))


def test_mulaw_sample_from_uniform_cdf_boundaries():
    dist = MuLawCategorical(256)
    logits = torch.randn(1, 256, generator=_gen(2))
    cdf = torch.cumsum(torch.softmax(logits.double(), dim=1), dim=1)[0]
    centers = dist.bin_centers()
    for j in [0, 1, 57, 128, 254]:
        below = float(cdf[j]) * (1 - 1e-5)
        above = float(cdf[j]) * (1 + 1e-5)
        u = torch.tensor([[below], [above]])
        out = dist.sample_from_uniform(logits.expand(2, -1), u)
        assert out.tolist() == [centers[j].item(), centers[j + 1].item()]


def test_mulaw_sample_from_uniform_skips_zero_probability_bins():
    dist = MuLawCategorical(8)
    logits = torch.full((1, 8), -1e4)
    logits[0, 2:6] = torch.tensor([0.0, 1.0, -1.0, 0.5])  # only bins 2..5 have mass
    centers = dist.bin_centers()
    u = torch.tensor([[0.0], [1.0 - 2**-24]])
    out = dist.sample_from_uniform(logits.expand(2, -1), u)
    assert out.tolist() == [centers[2].item(), centers[5].item()]


def test_mulaw_temperature_divides_logits():
    dist = MuLawCategorical(256)
    g = _gen(3)
    logits = torch.randn(64, 256, generator=g)
    u = torch.rand(64, 1, generator=g)
    torch.testing.assert_close(
        dist.sample_from_uniform(logits, u, temperature=0.5),
        dist.sample_from_uniform(logits / 0.5, u),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_mulaw_sample_follows_tempered_softmax(temperature):
    dist = MuLawCategorical(256)
    logits = torch.randn(1, 256, generator=_gen(4)) * 1.5
    g = _gen(5)
    counts = np.zeros(256, dtype=np.int64)
    for _ in range(8):  # 8 x 25k = 200k draws, chunked to bound memory
        draws = dist.sample(logits.expand(25_000, -1), temperature, generator=g)
        counts += np.bincount(AF.mu_law_encoding(draws, 256).numpy(), minlength=256)
    probs = torch.softmax(logits.double() / temperature, dim=1)[0].numpy()
    assert _chisquare_pvalue(counts, probs) > 1e-3


def test_sample_is_sample_from_uniform_with_torch_rand():
    dist = DiscretizedLogisticMixture(3, bits=8)
    params = _mixture_params(2, 3, (-0.5, 0.5), (-4, -2), seed=6)[:, :, None].expand(-1, -1, 50)
    uniform = torch.rand(2, 2, 50, generator=_gen(7))
    expected = dist.sample_from_uniform(params, uniform, 0.8)
    torch.testing.assert_close(dist.sample(params, 0.8, generator=_gen(7)), expected)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "dist", [MuLawCategorical(256), DiscretizedLogisticMixture(3, bits=16)], ids=["mulaw", "mol16"]
)
def test_half_precision_params_sample_as_float32(dist, half):
    """Half params are promoted like log_prob's: float16 rounds 1 - 1e-5 to 1, and the top 16-bit bin to inf."""
    params = torch.randn(2, dist.params_channels, 40, generator=_gen(3)).to(half)
    uniform = torch.rand(2, dist.noise_channels, 40, generator=_gen(4))
    uniform[:, :, 0] = 0.99999  # the logistic's far right tail: the top bin
    got = dist.sample_from_uniform(params, uniform.to(half), 0.9)
    expected = dist.sample_from_uniform(params.float(), uniform.to(half).float(), 0.9)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert torch.isin(got, dist.bin_centers()).all()
    drawn = dist.sample(params, 0.9, generator=_gen(5))
    assert drawn.dtype == torch.float32 and torch.isin(drawn, dist.bin_centers()).all()


# ------------------------------------------------------- discretized logistic mixture

_PARAM_SETS = {
    "random": lambda k, c: _mixture_params(4, k, (-1.0, 1.0), (-7.0, 0.0), seed=10),
    "means_at_edges_tiny": lambda k, c: torch.cat(
        [
            torch.zeros(4, k),
            torch.tensor([-1.0, 1.0, -1.0 - 1e-4, 1.0 + 1e-4])[:, None].expand(4, k),
            torch.full((4, k), -7.0),
        ],
        dim=1,
    ),
    "means_beyond": lambda k, c: torch.cat(
        [
            torch.randn(4, k, generator=_gen(11)),
            torch.tensor([-3.0, 3.0, -1e3, 1e3])[:, None].expand(4, k),
            torch.tensor([-7.0, -2.0, 10.0, -20.0])[:, None].expand(4, k),
        ],
        dim=1,
    ),
    "tiny_scale_on_centre": lambda k, c: torch.cat(
        [
            torch.randn(4, k, generator=_gen(12)),
            c[torch.randint(0, c.numel(), (4, k), generator=_gen(13))],
            torch.full((4, k), -30.0),
        ],
        dim=1,
    ),
    "large_scale": lambda k, c: _mixture_params(4, k, (-1.0, 1.0), (5.0, 10.0), seed=14),
}


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("mixtures", [1, 10])
@pytest.mark.parametrize("param_set", sorted(_PARAM_SETS))
def test_mixture_probabilities_sum_to_one(bits, mixtures, param_set):
    dist = DiscretizedLogisticMixture(mixtures, bits=bits)
    params = _PARAM_SETS[param_set](mixtures, dist.bin_centers())
    log_p = _all_bins_log_prob(dist, params)
    assert bool(torch.isfinite(log_p).all())
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(4), rtol=0, atol=1e-4)


@pytest.mark.parametrize("bits", [8, 16])
def test_mixture_bin_centers(bits):
    dist = DiscretizedLogisticMixture(2, bits=bits)
    centers = dist.bin_centers()
    assert centers.dtype == torch.float32 and dist.num_bins == 2**bits == centers.numel()
    assert centers[0] == -1 and centers[-1] == 1
    exact = torch.arange(2**bits, dtype=torch.float64) * dist.bin_width - 1
    assert dist.bin_width == pytest.approx(2 / (2**bits - 1), rel=1e-15)
    torch.testing.assert_close(centers.double(), exact, rtol=0, atol=6e-8)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize(
    ("log_scale", "atol"),
    # Float32 places a bin centre only to ~6e-8, i.e. 6e-8 / s scales in logistic units,
    # so the attainable log-probability accuracy is ~1e-5 for s >= e^-4 and ~1e-4 at e^-7.
    [((-4.0, 0.0), 1e-5), ((-7.0, -5.0), 1e-4)],
)
def test_mixture_log_prob_matches_float64_reference(bits, log_scale, atol):
    dist = DiscretizedLogisticMixture(10, bits=bits)
    n = 4000
    params = _mixture_params(n, 10, (-1.0, 1.0), log_scale, seed=20)
    g = _gen(21)
    # Bins near the first component's mean (where mass is not vanishing), plus both edges.
    k = ((params[:, 10] + 1) * (2**bits - 1) / 2).round() + torch.randint(-3, 4, (n,), generator=g)
    k = k.clamp(0, 2**bits - 1)
    k[:4] = torch.tensor([0, 0, 2**bits - 1, 2**bits - 1])
    # Any point inside a bin (and anything beyond +-1 for the edge bins) scores that bin.
    offset = (torch.rand(n, generator=g) - 0.5) * 0.8 * dist.bin_width
    audio = dist.bin_centers()[k.long()] + offset
    audio[:4] = torch.tensor([-1.0, -1.7, 1.0, 1.7])
    log_p = dist.log_prob(params[:, :, None], audio[:, None])[:, 0].double().numpy()
    reference = _reference_mixture_log_prob(params, k, bits)
    keep = reference > -25  # float64 CDF differences are themselves unreliable below this
    assert keep.mean() > 0.9
    np.testing.assert_allclose(log_p[keep], reference[keep], rtol=0, atol=atol)


@pytest.mark.parametrize("bits", [8, 16])
def test_mixture_values_and_gradients_finite_at_extremes(bits):
    dist = DiscretizedLogisticMixture(4, bits=bits)
    cases = []
    for mean in (-1e3, 1e3, -1.0, 1.0):
        for log_scale in (-7.0, -50.0, 10.0, 100.0):
            means = [mean, -mean, 0.0, 1e3 * math.copysign(1, mean)]
            cases.append([0.0] * 4 + means + [log_scale] * 4)
    params = torch.tensor(cases)[:, :, None].expand(-1, -1, 3).contiguous().requires_grad_()
    audio = torch.tensor([-1.0, 0.0, 1.0]).expand(len(cases), 3)
    log_p = dist.log_prob(params, audio)
    assert bool(torch.isfinite(log_p).all())
    assert bool((log_p <= 0).all())
    log_p.sum().backward()
    assert bool(torch.isfinite(params.grad).all())


def test_mixture_gradient_matches_finite_differences():
    dist = DiscretizedLogisticMixture(3, bits=8)
    params = _mixture_params(2, 3, (-1.0, 1.0), (-4.0, 0.0), seed=30)
    params = params[:, :, None].expand(-1, -1, 4).contiguous().double().requires_grad_()
    audio = torch.tensor([[-1.0, -0.3, 0.2, 1.0], [-0.9, 0.0, 0.5, 0.99]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: dist.log_prob(p, audio), (params,))


def test_mixture_sample_from_uniform_formula():
    dist = DiscretizedLogisticMixture(2, bits=8)
    # weights softmax([0, 0]) = [0.5, 0.5]; component 0 at 0.3, component 1 at -5 (clamps to -1)
    params = torch.tensor([[0.0, 0.0, 0.3, -5.0, math.log(0.05), -3.0]])
    half = 127.5
    cases = [  # (u0, u1, temperature, expected audio before quantization)
        (0.49, 0.5, 1.0, 0.3),
        (0.51, 0.5, 1.0, -1.0),
        (0.2, 0.9, 1.0, 0.3 + 0.05 * math.log(9)),
        (0.2, 0.9, 0.5, 0.3 + 0.025 * math.log(9)),
        (0.2, 0.0, 1.0, 0.3 + 0.05 * math.log(1e-5 / (1 - 1e-5))),
        (0.2, 1.0, 1.0, 0.3 + 0.05 * math.log((1 - 1e-5) / 1e-5)),
    ]
    for u0, u1, temperature, x in cases:
        out = dist.sample_from_uniform(params, torch.tensor([[u0, u1]]), temperature)
        expected = round((max(-1.0, min(1.0, x)) + 1) * half) / half - 1
        assert out.item() == pytest.approx(expected, abs=1e-7)
        assert out.item() in dist.bin_centers().tolist()


def test_mixture_log_scales_clamped_below():
    dist = DiscretizedLogisticMixture(2, bits=8, log_scale_min=-6.0)
    at_min = torch.tensor([[0.3, -0.1, 0.01, 0.5, -6.0, -6.0]])[:, :, None].expand(-1, -1, 5)
    below = at_min.clone()
    below[:, 4:] = torch.tensor([-9.0, -40.0])[None, :, None]
    audio = torch.tensor([[-1.0, 0.0, 0.01, 0.02, 0.5]])
    torch.testing.assert_close(dist.log_prob(below, audio), dist.log_prob(at_min, audio))
    uniform = torch.rand(1, 2, 5, generator=_gen(35))
    torch.testing.assert_close(
        dist.sample_from_uniform(below, uniform), dist.sample_from_uniform(at_min, uniform)
    )


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_mixture_sample_follows_distribution(temperature):
    dist = DiscretizedLogisticMixture(3, bits=8)
    params = torch.tensor([[0.5, -0.2, 0.1, -0.95, 0.1, 0.97, -3.5, -2.0, -4.0]])
    draws = dist.sample(params.expand(200_000, -1), temperature, generator=_gen(40))
    assert bool(torch.isin(draws, dist.bin_centers()).all())
    counts = np.bincount(torch.round((draws + 1) * 127.5).long().numpy(), minlength=256)
    # Tempering = logits / T and scales * T (no clamping is active for these log-scales).
    logits, means, log_scales = params.split(3, dim=1)
    tempered = torch.cat([logits / temperature, means, log_scales + math.log(temperature)], 1)
    probs = _all_bins_log_prob(dist, tempered.double())[0].exp().numpy()
    assert _chisquare_pvalue(counts, probs) > 1e-3


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "dist", [MuLawCategorical(16), DiscretizedLogisticMixture(2, bits=8)], ids=["mulaw", "mol"]
)
@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_non_positive_temperature_raises(dist, temperature):
    params = torch.zeros(1, dist.params_channels, 3)
    with pytest.raises(ValueError, match="temperature"):
        dist.sample(params, temperature)
    with pytest.raises(ValueError, match="temperature"):
        dist.sample_from_uniform(params, torch.full((1, dist.noise_channels, 3), 0.5), temperature)


@pytest.mark.parametrize(
    "dist", [MuLawCategorical(16), DiscretizedLogisticMixture(2, bits=8)], ids=["mulaw", "mol"]
)
def test_wrong_channel_count_raises(dist):
    wrong = dist.params_channels + 1
    params = torch.zeros(1, wrong, 3)
    pattern = rf"{dist.params_channels}\b.*\b{wrong}"
    with pytest.raises(ValueError, match=pattern):
        dist.log_prob(params, torch.zeros(1, 3))
    with pytest.raises(ValueError, match=pattern):
        dist.sample(params)
    with pytest.raises(ValueError, match=pattern):
        dist.sample_from_uniform(params, torch.full((1, dist.noise_channels, 3), 0.5))


def test_noise_and_param_channels():
    mulaw = MuLawCategorical(256)
    assert (mulaw.params_channels, mulaw.noise_channels, mulaw.num_bins) == (256, 1, 256)
    mol = DiscretizedLogisticMixture(10)
    assert (mol.params_channels, mol.noise_channels, mol.num_bins) == (30, 2, 65536)
