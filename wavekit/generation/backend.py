"""The contract of a queued generation backend: per-stream state that `run` advances together.

`TorchQueuedBackend` (any device) and `NumbaQueuedBackend` (the fused CPU kernel) keep
the same state, the last inputs of every stream and every dilated layer's queue, each in
its own layout; `generate`, `teacher_forced_params` and the serving engine use only this.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from torch import Tensor

from wavekit.generation.weights import InferenceWeights


class QueuedBackend(ABC):
    """Queued generator state for a batch of streams; `run` advances all of them together."""

    @staticmethod
    @abstractmethod
    def floats_per_step(weights: InferenceWeights, streams: int) -> int:
        """Floats `run` holds per step of a mel-conditioned span of `streams` streams.

        Callers size their spans by it (`generation.SPAN_BUDGET`), bounding memory.
        """

    @property
    @abstractmethod
    def batch(self) -> int:
        """How many streams the state holds."""

    @abstractmethod
    def add_streams(self, count: int) -> None:
        """Append `count` fresh streams: silence before them, their first sample at the next step.

        Every queue slot a new stream reads before writing it holds zeros, the same as a
        stream started at step 0, so its samples do not depend on when it joined.
        """

    @abstractmethod
    def keep_streams(self, indices: Sequence[int]) -> None:
        """Keep only the streams at `indices`, in that order (the others are dropped)."""

    @abstractmethod
    def run(
        self,
        bias: Tensor,
        noise: Tensor | None,
        temperature: float | Sequence[float],
        forced: Tensor | None = None,
        cond: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Advance `steps` samples: audio [B, steps], and with `forced` the params [B, C, steps].

        bias [B, 1 or steps, L, G] is the gate bias without the mel term; noise [B, n,
        steps] the uniforms of the draws; `temperature` one value or one per stream. With
        `forced` audio [B, steps] (teacher forcing) the given samples are fed back instead
        of draws. `cond` is the upsampled mel of these steps [B, M, steps], whose gate
        term the backend adds.
        """
