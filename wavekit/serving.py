"""Continuous batching for serving: one background thread samples all live requests together.

`BatchingEngine.submit` checks a request's arguments and returns a `Request` at once; the
engine thread advances every active stream `step_samples` samples per backend call, and
requests that arrive meanwhile join the running batch between two calls and leave it
when done. So N concurrent users cost about one batched generation, not N sequential
ones. Each request keeps its own seeded noise generator, conditioning, temperature and
queue state (`add_streams` / `keep_streams` of the backends), computed exactly as
`wavekit.generate` does for one stream: a request's audio is the audio of
`generate(model, num_samples, mel=..., speaker=..., temperature=..., seed=...)`,
whoever shared the batch and whenever it joined. (Two caveats, both about rounding, as
between the backends: on the numba backend a lone stream is split across the cores,
which sums in another order; on the torch backend the mel's gate term is one product
per call over that call's steps, and MKL rounds it differently for other spans. A draw
can then differ where the uniform lands within rounding of a bin edge, about once in
1e5 samples for 256 classes.)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from wavekit import generation
from wavekit.checks import positive_int
from wavekit.generation import BACKENDS, CHUNK_SIZE, _backend_name, _Batch, _prepare, _speaker_count
from wavekit.generation.weights import InferenceWeights
from wavekit.model import WaveNet

__all__ = ["BatchingEngine", "Request"]

_END = object()  # queued after a request's last chunk


class Request:
    """One submitted generation. Iterate it (once) for float32 audio chunks [n] in [-1, 1].

    `num_samples` is its length and `sample_rate` the model's. Chunks hold `chunk_size`
    samples (the last one may be shorter) and arrive as the engine produces them. A failure
    inside the engine raises RuntimeError from the iterator. Leaving the iteration early
    (or `cancel()`) drops the stream from the batch.
    """

    def __init__(self, num_samples: int, sample_rate: int, chunk_size: int):
        self.num_samples = num_samples
        self.sample_rate = sample_rate
        self.chunk_size = chunk_size
        self._chunks: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self._read = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop generating this request; the engine drops it before its next step."""
        self._cancelled.set()

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._read:
            raise RuntimeError("Request: its audio was already read (a request is iterated once)")
        self._read = True
        try:
            while True:
                item = self._chunks.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise RuntimeError(f"generation failed: {item}") from item
                yield item
        finally:
            self.cancel()

    def result(self) -> np.ndarray:
        """All of the request's audio [num_samples], once it is done."""
        chunks = list(self)
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    def _put(self, item) -> None:
        self._chunks.put(item)


class _Stream:
    """The engine's state of one request: noise, conditioning, progress and undelivered audio."""

    def __init__(
        self, request: Request, batch: _Batch, weights: InferenceWeights, noise_channels: int, block_steps: int
    ):
        self.request = request
        self.batch = batch
        self.total = batch.lengths[0]
        self.done = 0
        self.noise_channels = noise_channels
        self.block_steps = block_steps
        self.bias = weights.static_bias(batch.speaker_embedding, 1)  # [1, 1, L, G]
        self.cond_block: tuple[int, Tensor | None] = (0, None)  # (first step, upsampled mel from there)
        self.pending: list[np.ndarray] = []
        self.pending_samples = 0

    @property
    def remaining(self) -> int:
        return self.total - self.done

    def cond(self, steps: int) -> Tensor | None:
        """The upsampled mel of the next `steps` steps [1, M, steps], or None for an unconditioned model.

        Upsampled `block_steps` steps at a time: the engine's steps are short, and upsampling
        each of them for each stream would cost more than the slicing.
        """
        if self.batch.mel is None:
            return None
        first, block = self.cond_block
        if block is None or self.done + steps > first + block.shape[2]:
            first = self.done
            block = self.batch.cond(first, min(self.total, first + max(steps, self.block_steps)))
            self.cond_block = first, block
        return block[:, :, self.done - first : self.done - first + steps]

    def noise(self, steps: int) -> Tensor:
        return self.batch.noise(self.noise_channels, steps, torch.device("cpu"))

    def deliver(self, audio: np.ndarray) -> bool:
        """Take the next samples; hand full chunks (and at the end the rest) to the request. True when done."""
        self.done += len(audio)
        self.pending.append(audio)
        self.pending_samples += len(audio)
        size = self.request.chunk_size
        finished = self.done >= self.total
        if self.pending_samples >= size or finished:
            joined = np.concatenate(self.pending)
            cut = len(joined) if finished else len(joined) - len(joined) % size
            for start in range(0, cut, size):
                self.request._put(joined[start : start + size])
            self.pending = [joined[cut:]] if cut < len(joined) else []
            self.pending_samples = len(joined) - cut
        if finished:
            self.request._put(_END)
        return finished


class BatchingEngine:
    """Runs the queued sampler over every live request in one background thread.

    `max_batch` streams generate together (later requests wait for a free slot: at each step
    boundary every waiting request joins while slots last, those of streams cancelled by then included);
    `step_samples` is how many samples each backend call advances, which bounds how long a
    new request waits to join (default 1/20 s of audio). `backend` is "auto" (numba on
    the CPU, else torch), "numba" or "torch".
    Thread-safe; `close()` (or leaving a `with` block) stops the thread.
    """

    def __init__(
        self,
        model: WaveNet,
        *,
        max_batch: int = 64,
        step_samples: int | None = None,
        chunk_size: int | None = None,
        backend: str = "auto",
    ):
        rate = model.config.sample_rate
        step_samples = max(1, rate // 20) if step_samples is None else step_samples
        chunk_size = rate if chunk_size is None else chunk_size
        for name, value in (("max_batch", max_batch), ("step_samples", step_samples), ("chunk_size", chunk_size)):
            positive_int(name, value)
        self.model = model
        self.max_batch = max_batch
        self.step_samples = step_samples
        self.chunk_size = chunk_size
        self.weights = InferenceWeights.from_model(model)
        # Each stream keeps a block of its upsampled mel: SPAN_BUDGET floats over a full batch.
        mel = max(1, model.config.mel_channels)
        self._block_steps = max(step_samples, min(CHUNK_SIZE, generation.SPAN_BUDGET // (mel * max_batch)))
        device = self.weights.conv_w.device
        self.backend = _backend_name(backend, device)
        self._device = device
        self._waiting: list[_Stream] = []
        self._active: list[_Stream] = []  # changed by the engine thread only, always under the lock
        self._runner = None
        self._closed = False
        self._lock = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="wavekit-engine", daemon=True)
        self._thread.start()

    @property
    def requests(self) -> int:
        """How many requests are generating or waiting for a slot."""
        with self._lock:
            return len(self._waiting) + len(self._active)

    def submit(
        self,
        num_samples: int | None = None,
        *,
        mel: Tensor | None = None,
        speaker: int | str | None = None,
        temperature: float = 1.0,
        seed: int | None = None,
        chunk_size: int | None = None,
    ) -> Request:
        """Queue one stream (arguments as in `wavekit.generate` for one stream) and return its handle.

        `chunk_size` is the delivery size in samples (default: the engine's, 1 s of audio).
        Bad arguments raise ValueError naming them, here and not in the engine thread.
        """
        chunk_size = positive_int("chunk_size", self.chunk_size if chunk_size is None else chunk_size)
        if isinstance(num_samples, (list, tuple)) or isinstance(mel, (list, tuple)):
            raise ValueError("num_samples, mel: one stream per request (submit each stream on its own)")
        if isinstance(mel, Tensor) and mel.dim() == 3 and mel.shape[0] != 1:
            raise ValueError(f"mel: one stream per request, got a batch of {mel.shape[0]}")
        if speaker is not None and _speaker_count(speaker) != 1:
            raise ValueError(f"speaker: one per request, got {speaker!r}")
        batch = _prepare(self.model, num_samples, mel, speaker, 1, temperature, seed)
        request = Request(batch.lengths[0], self.model.config.sample_rate, chunk_size)
        with torch.no_grad():
            stream = _Stream(request, batch, self.weights, self.model.distribution.noise_channels, self._block_steps)
        with self._lock:
            if self._closed:
                raise RuntimeError("BatchingEngine: closed, submit to a new engine")
            self._waiting.append(stream)
            self._lock.notify()
        return request

    def close(self) -> None:
        """Stop the engine thread; requests still running or waiting fail with RuntimeError."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()

    def __enter__(self) -> BatchingEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- engine thread

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._waiting and not self._active:
                    self._lock.wait()
                if self._closed:
                    left = self._waiting + self._active
                    self._waiting, self._active = [], []
                    break
            try:
                with torch.no_grad():
                    self._step()
            except Exception as err:  # every live request learns of it; the engine goes on with fresh state
                with self._lock:
                    failed, self._active = self._active, []
                self._runner = None
                for stream in failed:
                    stream.request._put(err)
        for stream in left:
            stream.request._put(RuntimeError("the engine was closed"))

    def _step(self) -> None:
        """At a step boundary: drop cancelled streams (running or waiting), then let every waiting
        one join, up to `max_batch`, so a cancelled stream's slot is free at once; advance all."""
        with self._lock:
            keep = [i for i, s in enumerate(self._active) if not s.request.cancelled]
            waiting = [s for s in self._waiting if not s.request.cancelled]
            free = self.max_batch - len(keep)
            joining, self._waiting = waiting[:free], waiting[free:]
            dropped = len(keep) < len(self._active)
            self._active = [self._active[i] for i in keep] + joining
        if self._runner is None:  # at the start or after a failure, when nothing was active
            self._runner = BACKENDS[self.backend](self.weights, self.model.distribution, 0)
        runner = self._runner
        if dropped:
            runner.keep_streams(keep)
        if joining:
            runner.add_streams(len(joining))
        active = self._active
        if not active:
            return
        steps = min(self.step_samples, min(s.remaining for s in active))
        conds = [s.cond(steps) for s in active]
        if conds[0] is not None:  # the span's mel, bounded in memory as in `generate`
            per_step = runner.floats_per_step(self.weights, len(active))
            steps = min(steps, max(1, generation.SPAN_BUDGET // per_step))
            conds = [c[:, :, :steps] for c in conds]
        bias = torch.cat([s.bias for s in active]).to(self._device)
        cond = torch.cat(conds).to(self._device) if conds[0] is not None else None
        noise = torch.cat([s.noise(steps) for s in active]).to(self._device)
        temperatures = [s.batch.temperature for s in active]
        audio = runner.run(bias, noise, temperatures, cond=cond)[0].cpu().numpy()
        going = [not s.deliver(audio[i]) for i, s in enumerate(active)]
        if not all(going):
            keep = [i for i, on in enumerate(going) if on]
            runner.keep_streams(keep)
            with self._lock:
                self._active = [active[i] for i in keep]
