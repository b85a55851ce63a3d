"""WaveNet output heads: turn network outputs into per-sample likelihoods and draws.

Every head implements :class:`OutputDistribution`: it declares how many channels the
network must produce, scores quantized audio with :meth:`OutputDistribution.log_prob`
(the training loss is its negative mean) and draws audio with
:meth:`OutputDistribution.sample`. Sampling is split into drawing uniforms and a
deterministic :meth:`OutputDistribution.sample_from_uniform`, whose float32 algorithm
is spelled out so the fast numba generator can reproduce it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OutputDistribution", "MuLawCategorical", "DiscretizedLogisticMixture"]

# Lower bound of log(bin_width / scale): keeps exp() of it a normal float32 (> 1e-35) so
# log(-expm1(-delta)) and its gradient stay finite; only scales above ~e^70 reach it.
_MIN_LOG_DELTA = -80.0


def _inverse_cdf(logits: Tensor, uniform: Tensor, temperature: float) -> Tensor:
    """Pick an index along dim 1 of ``logits`` with probability softmax(logits / temperature).

    Steps (``logits`` float32 [B, N, *rest], ``uniform`` [B, *rest] in [0, 1)):

    1. ``z = logits / float32(temperature)`` (IEEE float32 division);
    2. ``m = max_j z[j]``;  ``w[j] = exp(z[j] - m)`` in float32 (unnormalised weights);
    3. ``cdf[j] = w[0] + ... + w[j]`` accumulated left to right in float64;
    4. ``threshold = float64(u) * cdf[N - 1]``;
    5. ``index = #{j : cdf[j] <= threshold}``, clamped to ``N - 1`` (only reachable for u >= 1).

    Step 5 returns the first j with ``cdf[j] > u * total``, so a bin whose weight
    underflowed to zero is never chosen for u in [0, 1). Torch's float32 ``exp`` may
    differ from another libm's by an ulp, so a re-implementation agrees bit for bit
    except for the rare ``u`` that lands within rounding of a cdf boundary.
    """
    z = logits / temperature
    weights = torch.exp(z - z.amax(dim=1, keepdim=True))
    cdf = torch.cumsum(weights.double(), dim=1)
    threshold = uniform.double().unsqueeze(1) * cdf[:, -1:]
    index = (cdf <= threshold).sum(dim=1)
    return index.clamp(max=logits.shape[1] - 1)


def _at_least_float32(params: Tensor) -> torch.dtype:
    """The dtype the heads compute in: float32, or float64 for float64 params."""
    return torch.promote_types(params.dtype, torch.float32)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


class OutputDistribution(ABC):
    """Common interface of the WaveNet output heads.

    ``params`` always has the distribution parameters on dim 1: ``[B, params_channels, *rest]``.
    Audio values are floats in [-1, 1]; every value is scored by the quantization bin it
    falls in, and every draw is exactly a bin centre.
    """

    params_channels: int
    noise_channels: int

    @property
    @abstractmethod
    def num_bins(self) -> int:
        """Number of quantization bins of the audio range [-1, 1]."""

    @abstractmethod
    def bin_centers(self) -> Tensor:
        """Float32 audio value of every bin, ascending, shape ``[num_bins]``."""

    def log_prob(self, params: Tensor, audio: Tensor) -> Tensor:
        """Natural log-probability ``[B, T]`` of the bin of each ``audio[B, T]`` value.

        ``params`` is ``[B, params_channels, T]``; half-precision params are promoted to float32.
        """
        self._check_params(params)
        if audio.shape != params.shape[:1] + params.shape[2:]:
            raise ValueError(
                f"audio shape {tuple(audio.shape)} does not match params shape "
                f"{tuple(params.shape)} without its channel dim"
            )
        dtype = _at_least_float32(params)
        return self._log_prob(params.to(dtype), audio.to(dtype))

    def sample_from_uniform(
        self, params: Tensor, uniform: Tensor, temperature: float = 1.0
    ) -> Tensor:
        """Map ``uniform[B, noise_channels, *rest]`` in [0, 1) to audio ``[B, *rest]``.

        Deterministic (no RNG). Temperature < 1 sharpens and > 1 flattens the
        distribution; the exact algorithm is documented on each subclass. Half-precision
        params and uniforms are promoted to float32, and so is the draw (a 16-bit bin
        centre has no exact half-precision value).
        """
        self._check_params(params)
        _check_temperature(temperature)
        expected = params.shape[:1] + (self.noise_channels,) + params.shape[2:]
        if uniform.shape != expected:
            raise ValueError(
                f"uniform must have shape {tuple(expected)}, got {tuple(uniform.shape)}"
            )
        dtype = _at_least_float32(params)
        return self._sample_from_uniform(params.to(dtype), uniform.to(dtype), temperature)

    def sample(
        self,
        params: Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw audio ``[B, *rest]`` from ``params[B, params_channels, *rest]``.

        The uniforms are ``torch.rand([B, noise_channels, *rest], generator=generator)``
        on the device of ``params``, in float32 or ``params``' wider dtype, passed to
        :meth:`sample_from_uniform`.
        """
        self._check_params(params)
        _check_temperature(temperature)
        shape = params.shape[:1] + (self.noise_channels,) + params.shape[2:]
        dtype = _at_least_float32(params)
        uniform = torch.rand(shape, generator=generator, dtype=dtype, device=params.device)
        return self._sample_from_uniform(params.to(dtype), uniform, temperature)

    def _check_params(self, params: Tensor) -> None:
        if params.dim() < 2 or params.shape[1] != self.params_channels:
            got = params.shape[1] if params.dim() >= 2 else f"a {params.dim()}-d tensor"
            raise ValueError(
                f"{type(self).__name__} expects params with {self.params_channels} "
                f"channels at dim 1, got {got}"
            )

    @abstractmethod
    def _log_prob(self, params: Tensor, audio: Tensor) -> Tensor: ...

    @abstractmethod
    def _sample_from_uniform(
        self, params: Tensor, uniform: Tensor, temperature: float
    ) -> Tensor: ...


class MuLawCategorical(OutputDistribution):
    """Softmax over ``channels`` mu-law bins; params are the ``channels`` logits.

    Bins follow ``wavekit.audio.mulaw_encode`` / ``mulaw_decode`` (torchaudio's mu-law).
    """

    noise_channels = 1

    def __init__(self, channels: int = 256) -> None:
        if channels < 2:
            raise ValueError(f"channels must be >= 2, got {channels}")
        self.channels = channels
        self.params_channels = channels

    @property
    def num_bins(self) -> int:
        """Number of mu-law bins (``channels``)."""
        return self.channels

    def bin_centers(self) -> Tensor:
        """``mulaw_decode(arange(channels))``: the audio value of each bin, ascending."""
        from wavekit.audio import mulaw_decode

        return mulaw_decode(torch.arange(self.channels), self.channels)

    def _log_prob(self, params: Tensor, audio: Tensor) -> Tensor:
        from wavekit.audio import mulaw_encode

        bins = mulaw_encode(audio, self.channels)
        return F.log_softmax(params, dim=1).gather(1, bins.unsqueeze(1)).squeeze(1)

    def _sample_from_uniform(
        self, params: Tensor, uniform: Tensor, temperature: float
    ) -> Tensor:
        """Inverse-CDF draw of a mu-law bin.

        With ``u = uniform[:, 0]`` and the logits ``params`` (float32):

        1. ``bin`` = inverse CDF of softmax(logits / temperature) at ``u``, exactly as
           follows: ``z = logits / float32(T)``; ``w = exp(z - max(z))`` (float32);
           ``cdf`` = running sum of ``w`` in float64 (left to right);
           ``bin = #{j : cdf[j] <= float64(u) * cdf[-1]}`` clamped to ``channels - 1``;
        2. return ``mulaw_decode(bin, channels)``, i.e. with ``mu = channels - 1``
           (float32): ``y = bin / mu * 2 - 1``;
           ``x = sign(y) * (exp(|y| * log1p(mu)) - 1) / mu``. This equals
           ``bin_centers()[bin]``; a re-implementation should index that table rather
           than recompute ``exp``, whose last bit varies between libms.
        """
        from wavekit.audio import mulaw_decode

        bins = _inverse_cdf(params, uniform[:, 0], temperature)
        return mulaw_decode(bins, self.channels).to(params.dtype)


class DiscretizedLogisticMixture(OutputDistribution):
    """PixelCNN++-style discretized mixture of ``mixtures`` logistics over ``2**bits`` bins.

    ``params`` channels are ``[logit_probs (K), means (K), log_scales (K)]``. Bin ``k``
    (``k = 0 .. 2**bits - 1``) has centre ``k / h - 1`` with ``h = (2**bits - 1) / 2``
    (exact in float32) and width ``1 / h``; the lowest bin also takes the whole left
    tail and the highest bin the whole right tail. Log-scales are clamped below at
    ``log_scale_min``.
    """

    noise_channels = 2

    def __init__(
        self, mixtures: int = 10, bits: int = 16, log_scale_min: float = -7.0
    ) -> None:
        if mixtures < 1:
            raise ValueError(f"mixtures must be >= 1, got {mixtures}")
        if not 1 <= bits <= 24:
            raise ValueError(f"bits must be in [1, 24], got {bits}")
        self.mixtures = mixtures
        self.bits = bits
        self.log_scale_min = log_scale_min
        self.params_channels = 3 * mixtures
        self._half_levels = (2**bits - 1) / 2

    @property
    def num_bins(self) -> int:
        """Number of quantization bins (``2**bits``)."""
        return 2**self.bits

    @property
    def bin_width(self) -> float:
        """Distance between neighbouring bin centres, ``2 / (2**bits - 1)``."""
        return 1.0 / self._half_levels

    def bin_centers(self) -> Tensor:
        """``k / h - 1`` for ``k = 0 .. 2**bits - 1`` in float32, ascending."""
        return torch.arange(self.num_bins, dtype=torch.float32) / self._half_levels - 1.0

    def _quantize(self, audio: Tensor) -> Tensor:
        """Float bin index ``round((clamp(x, -1, 1) + 1) * h)`` (half to even) of each value."""
        return torch.round((audio.clamp(-1.0, 1.0) + 1.0) * self._half_levels)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logit_probs, means, log_scales = params.split(self.mixtures, dim=1)
        return logit_probs, means, log_scales.clamp(min=self.log_scale_min)

    def _log_prob(self, params: Tensor, audio: Tensor) -> Tensor:
        """Per-component bin masses in log space, then logsumexp over components.

        With ``a = (c + w/2 - mu) / s`` and ``b = (c - w/2 - mu) / s`` (``a - b = w / s``):
        middle bins use ``log(sig(a) - sig(b)) = log(-expm1(-(w / s))) + logsig(a) + logsig(-b)``,
        the lowest bin ``logsig(a)``, the highest ``logsig(-b)``. Every branch is finite
        for all inputs, so ``torch.where`` gives finite values and gradients.
        """
        logit_probs, means, log_scales = self._split(params)
        k = self._quantize(audio).unsqueeze(1)
        centered = (k / self._half_levels - 1.0) - means
        inv_scale = torch.exp(-log_scales)
        half_width = 0.5 * self.bin_width
        upper = (centered + half_width) * inv_scale
        lower = (centered - half_width) * inv_scale
        log_delta = (math.log(self.bin_width) - log_scales).clamp(min=_MIN_LOG_DELTA)
        log_middle = (
            torch.log(-torch.expm1(-torch.exp(log_delta)))
            + F.logsigmoid(upper)
            + F.logsigmoid(-lower)
        )
        log_bin = torch.where(
            k == 0,
            F.logsigmoid(upper),
            torch.where(k == self.num_bins - 1, F.logsigmoid(-lower), log_middle),
        )
        return torch.logsumexp(F.log_softmax(logit_probs, dim=1) + log_bin, dim=1)

    def _sample_from_uniform(
        self, params: Tensor, uniform: Tensor, temperature: float
    ) -> Tensor:
        """Pick a component with ``u0``, draw a logistic with ``u1``, quantize.

        With ``u0 = uniform[:, 0]``, ``u1 = uniform[:, 1]``, ``T = float32(temperature)``,
        ``h = float32((2**bits - 1) / 2)`` and all arithmetic in float32 unless noted:

        1. ``i`` = inverse CDF of softmax(logit_probs / T) at ``u0``:
           ``z = logit_probs / T``; ``w = exp(z - max(z))``; ``cdf`` = running sum of
           ``w`` in float64; ``i = #{j : cdf[j] <= float64(u0) * cdf[-1]}`` clamped to K - 1;
        2. ``mu = means[i]``; ``s = exp(max(log_scales[i], log_scale_min)) * T``;
        3. ``v = min(max(u1, 1e-5), 1 - 1e-5)`` (both bounds as float32);
           ``x = mu + s * (log(v) - log(1 - v))`` (multiply, then add; no FMA);
        4. ``x = min(max(x, -1), 1)``; ``k = round((x + 1) * h)`` rounding half to even
           (always within [0, 2**bits - 1]);
        5. return ``k / h - 1`` (the bin centre).
        """
        logit_probs, means, log_scales = self._split(params)
        component = _inverse_cdf(logit_probs, uniform[:, 0], temperature).unsqueeze(1)
        mean = means.gather(1, component).squeeze(1)
        scale = torch.exp(log_scales.gather(1, component).squeeze(1)) * temperature
        u = uniform[:, 1].clamp(1e-5, 1.0 - 1e-5)
        x = mean + scale * (torch.log(u) - torch.log(1.0 - u))
        return self._quantize(x) / self._half_levels - 1.0
