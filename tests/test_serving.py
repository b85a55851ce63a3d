"""Tests for wavekit.serving: the continuous-batching engine against `generate` (alone, and with
requests joining and leaving a running batch), the backends' stream add/remove and
per-stream temperature, chunk delivery, argument errors, cancel, close and failures
inside the engine thread.

Models are tiny (4 layers, 8 residual channels) with 8-bit outputs (mu-law or 8-bit
mixture), so sampling is exact and every comparison is bit for bit.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time

import numpy as np
import pytest
import torch

import wavekit.generation as generation
from wavekit.generation.weights import InferenceWeights
from wavekit.model import WaveNet, WaveNetConfig
from wavekit.serving import BatchingEngine

MEL_CHANNELS = 5
HOP = 4
SPEAKERS = 3

pytestmark = pytest.mark.timeout(120)  # a request that never ends must fail, not hang


def make_model(*, mel: bool = False, speakers: bool = True, head: str = "mulaw", seed: int = 0) -> WaveNet:
    torch.manual_seed(seed)
    config = WaveNetConfig(
        layers=4, stacks=1, kernel_size=2, residual_channels=8, gate_channels=16, skip_channels=16,
        head=head, bits=8, mixtures=4, mel_channels=MEL_CHANNELS if mel else 0, upsample_scales=(2, 2),
        num_speakers=SPEAKERS if speakers else 0,
    )  # fmt: skip
    return WaveNet(config).eval()


def random_mel(frames: int, seed: int) -> torch.Tensor:
    return torch.randn(MEL_CHANNELS, frames, generator=torch.Generator().manual_seed(seed))


def reference(model: WaveNet, **kwargs) -> np.ndarray:
    """`generate` for one stream, as a 1-D array."""
    return generation.generate(model, **kwargs)[0].numpy()


@contextlib.contextmanager
def threads(count: int):
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@pytest.fixture
def one_thread():
    """Eager PyTorch on tiny tensors runs on one intra-op thread (see tests/test_generation.py)."""
    with threads(1):
        yield


@pytest.fixture
def engine_factory():
    engines: list[BatchingEngine] = []

    def make(model: WaveNet, **kwargs) -> BatchingEngine:
        engines.append(BatchingEngine(model, **kwargs))
        return engines[-1]

    yield make
    for engine in engines:
        engine.close()


def slow_runs(monkeypatch, backend: str = "numba", delay: float = 0.002) -> list[int]:
    """Make every backend call take at least `delay` s; returns the batch size of every call
    (but the numba backend's call of no steps when it is built, which compiles the kernel)."""
    sizes: list[int] = []
    cls = generation.BACKENDS[backend]
    original = cls.run

    def run(self, bias, noise, temperature, forced=None, cond=None):
        if noise is None or noise.shape[2]:
            sizes.append(bias.shape[0])
            time.sleep(delay)
        return original(self, bias, noise, temperature, forced, cond)

    monkeypatch.setattr(cls, "run", run)
    return sizes


class HeldRuns:
    """Holds the engine inside every backend call with steps until the test lets it go on."""

    def __init__(self) -> None:
        self._sizes: queue.Queue = queue.Queue()
        self._go = threading.Semaphore(0)
        self._free = threading.Event()

    def batch(self) -> int:
        """The batch size of the next call, once the engine is held inside it."""
        return self._sizes.get(timeout=30)

    def step(self) -> None:
        """Let the held call run."""
        self._go.release()

    def run_free(self) -> None:
        """Let the held call and every later one run."""
        self._free.set()
        self._go.release()

    def hold(self, size: int) -> None:
        if not self._free.is_set():
            self._sizes.put(size)
            self._go.acquire()


@pytest.fixture
def held_runs(monkeypatch, engine_factory):
    """The numba backend's calls held (`HeldRuns`); released before the engines close."""
    held = HeldRuns()
    cls = generation.BACKENDS["numba"]
    original = cls.run

    def run(self, bias, noise, temperature, forced=None, cond=None):
        if noise is None or noise.shape[2]:
            held.hold(bias.shape[0])
        return original(self, bias, noise, temperature, forced, cond)

    monkeypatch.setattr(cls, "run", run)
    yield held
    held.run_free()


# --------------------------------------------------------------------------------------
# 1. Exactness against generate.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["mulaw", "mol"])
def test_solo_request_equals_generate(engine_factory, head):
    model = make_model(head=head)
    engine = engine_factory(model, step_samples=50, chunk_size=128)
    for seed, speaker, temperature in [(3, 0, 1.0), (4, 2, 0.6)]:
        got = engine.submit(700, speaker=speaker, temperature=temperature, seed=seed).result()
        expected = reference(model, num_samples=700, speaker=speaker, temperature=temperature, seed=seed)
        assert got.dtype == np.float32 and got.shape == (700,)
        assert np.array_equal(got, expected), (seed, speaker)
        assert len(np.unique(got)) > 20  # a real draw


def test_requests_joining_a_running_batch_equal_generate(engine_factory, monkeypatch):
    """A long request runs; three more join it mid-way (different lengths, speakers,
    temperatures), leave at different times; each equals its own `generate`."""
    model = make_model()
    sizes = slow_runs(monkeypatch)
    engine = engine_factory(model, step_samples=16, chunk_size=64)
    first = engine.submit(3000, speaker=1, temperature=1.0, seed=10)
    chunks = iter(first)
    head = next(chunks)  # the first request is generating now
    specs = [(500, 0, 0.7, 11), (1203, 2, 1.3, 12), (37, 1, 1.0, 13)]
    others = [engine.submit(n, speaker=s, temperature=t, seed=seed) for n, s, t, seed in specs]
    results = [r.result() for r in others]
    first_audio = np.concatenate([head, *chunks])
    assert np.array_equal(first_audio, reference(model, num_samples=3000, speaker=1, seed=10))
    for (n, s, t, seed), got in zip(specs, results):
        assert np.array_equal(got, reference(model, num_samples=n, speaker=s, temperature=t, seed=seed)), seed
    assert sizes[0] == 1 and max(sizes) == 4  # they really shared the batch
    assert sizes[-1] == 1  # and left it again before the first request ended


def test_concurrent_mel_requests_equal_generate(engine_factory, monkeypatch):
    """Per-request mel conditioning: each stream's gate bias follows its own mel."""
    model = make_model(mel=True)
    with torch.no_grad():  # make the mel matter for the draws
        for layer in model.layers:
            layer.cond.weight.mul_(5)
    sizes = slow_runs(monkeypatch)
    engine = engine_factory(model, step_samples=8, chunk_size=50)
    mels = [random_mel(f, seed=f) for f in (150, 41, 90, 7)]
    results: dict[int, np.ndarray] = {}

    def client(i: int) -> None:
        time.sleep(0.02 * i)
        results[i] = engine.submit(mel=mels[i], speaker=i % SPEAKERS, temperature=0.8, seed=100 + i).result()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(mels))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, mel in enumerate(mels):
        expected = reference(model, mel=mel, speaker=i % SPEAKERS, temperature=0.8, seed=100 + i)
        assert results[i].shape == (mel.shape[1] * HOP,)
        assert np.array_equal(results[i], expected), i
    assert max(sizes) >= 2


def test_mel_spans_match_generate(engine_factory, monkeypatch):
    """With a small span budget the mel comes in many spans; the engine reads across them."""
    model = make_model(mel=True)
    per_step = generation.BACKENDS["numba"].floats_per_step(InferenceWeights.from_model(model), 1)
    monkeypatch.setattr(generation, "SPAN_BUDGET", 14 * per_step)
    upsampled: list[int] = []
    original = generation._Batch.cond

    def cond(self, start, stop):
        upsampled.append(stop - start)
        return original(self, start, stop)

    monkeypatch.setattr(generation._Batch, "cond", cond)
    engine = engine_factory(model, max_batch=2, step_samples=5, chunk_size=33)
    mel = random_mel(30, seed=1)
    got = engine.submit(mel=mel, speaker=2, seed=5).result()
    # Each stream keeps at most its share of the budget (14 steps / 2 streams) upsampled.
    assert max(upsampled) == 7 and sum(upsampled) >= 30 * HOP
    assert np.array_equal(got, reference(model, mel=mel, speaker=2, seed=5))


def test_torch_backend_engine_equals_generate(engine_factory, one_thread):
    model = make_model(speakers=True)
    engine = engine_factory(model, step_samples=20, chunk_size=64, backend="torch")
    specs = [(90, 0, 1.0), (150, 1, 0.5)]
    results = [r.result() for r in [engine.submit(n, speaker=s, temperature=t, seed=s) for n, s, t in specs]]
    for (n, s, t), got in zip(specs, results):
        assert np.array_equal(got, reference(model, num_samples=n, speaker=s, temperature=t, seed=s, backend="torch"))


# --------------------------------------------------------------------------------------
# 2. The backends' per-stream state.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_backend_streams_added_late_and_removed(backend):
    """A stream added after 33 steps, next to others that are then removed, draws what a
    fresh backend draws for it; per-stream temperatures equal one-temperature runs. With 2
    threads the numba backend splits a lone stream: the state moves between layouts."""
    with threads(1 if backend == "torch" else 2):
        _check_streams_added_late_and_removed(backend)


def _check_streams_added_late_and_removed(backend: str) -> None:
    model = make_model(speakers=False)
    weights = InferenceWeights.from_model(model)
    cls = generation.BACKENDS[backend]
    bias = weights.static_bias(None, 1)
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(3, 1, 60, generator=g)

    alone = cls(weights, model.distribution, 1)
    expected = alone.run(bias, noise[2:, :, :40], 0.5)[0]
    mixed = cls(weights, model.distribution, 2)
    first = mixed.run(bias.expand(2, -1, -1, -1), noise[:2, :, :33], [1.0, 0.7])[0]
    mixed.add_streams(1)
    assert mixed.batch == 3
    part = mixed.run(bias.expand(3, -1, -1, -1), torch.cat([noise[:2, :, 33:40], noise[2:, :, :7]]), [1.0, 0.7, 0.5])[0]
    mixed.keep_streams([2])
    assert mixed.batch == 1
    if backend == "numba":
        assert mixed.parts == alone.parts == 2  # the lone stream is split again
    rest = mixed.run(bias, noise[2:, :, 7:40], [0.5])[0]
    assert torch.equal(torch.cat([part[2:], rest], dim=1), expected)
    for b, temperature in enumerate([1.0, 0.7]):  # the first two streams, each at its own temperature
        solo = cls(weights, model.distribution, 1)
        assert torch.equal(solo.run(bias, noise[b : b + 1, :, :33], temperature)[0], first[b : b + 1])


# --------------------------------------------------------------------------------------
# 3. Delivery, errors, cancel, close.
# --------------------------------------------------------------------------------------


def test_chunks_have_the_requested_size(engine_factory):
    model = make_model()
    engine = engine_factory(model, step_samples=7, chunk_size=100)
    request = engine.submit(250, speaker=0, seed=1)
    assert request.num_samples == 250 and request.sample_rate == model.config.sample_rate
    assert [len(c) for c in request] == [100, 100, 50]
    with pytest.raises(RuntimeError, match="already read"):
        request.result()
    assert [len(c) for c in engine.submit(90, speaker=0, seed=1, chunk_size=40)] == [40, 40, 10]


BAD = [
    (dict(num_samples=0), "num_samples"),
    (dict(num_samples=None), "num_samples"),
    (dict(num_samples=[10, 20]), "num_samples"),
    (dict(speaker=3), "speaker"),
    (dict(speaker=[0, 1]), "speaker"),
    (dict(speaker=None), "speaker"),
    (dict(temperature=0.0), "temperature"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(mel=torch.zeros(MEL_CHANNELS, 4)), "mel"),
]


@pytest.mark.parametrize("kwargs, argument", BAD)
def test_bad_requests_raise_at_submit(engine_factory, kwargs, argument):
    model = make_model()
    engine = engine_factory(model, step_samples=16)
    call = dict(num_samples=40, speaker=0, seed=0)
    call.update(kwargs)
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        engine.submit(**call)
    assert engine.requests == 0
    # the engine still serves good requests
    expected = reference(model, num_samples=40, speaker=0, seed=0)
    assert np.array_equal(engine.submit(40, speaker=0, seed=0).result(), expected)


def test_bad_mel_requests_raise_at_submit(engine_factory):
    model = make_model(mel=True)
    engine = engine_factory(model)
    with pytest.raises(ValueError, match=r"\bmel\b"):
        engine.submit(speaker=0)
    with pytest.raises(ValueError, match=r"\bmel\b"):
        engine.submit(mel=torch.zeros(2, MEL_CHANNELS, 4), speaker=0)
    with pytest.raises(ValueError, match=r"\bmel\b"):
        engine.submit(mel=torch.zeros(MEL_CHANNELS + 1, 4), speaker=0)
    with pytest.raises(ValueError, match=r"\bmel\b"):
        engine.submit(mel=[random_mel(3, 0)], speaker=0)


def test_bad_engine_arguments():
    model = make_model()
    for kwargs, argument in [
        (dict(max_batch=0), "max_batch"),
        (dict(step_samples=0), "step_samples"),
        (dict(chunk_size=-1), "chunk_size"),
        (dict(backend="fortran"), "backend"),
    ]:
        with pytest.raises(ValueError, match=rf"\b{argument}\b"):
            BatchingEngine(model, **kwargs)


def test_abandoned_request_leaves_the_batch(engine_factory, monkeypatch):
    model = make_model()
    sizes = slow_runs(monkeypatch)
    engine = engine_factory(model, step_samples=16, chunk_size=16)
    long = engine.submit(100_000, speaker=0, seed=1)
    other = engine.submit(400, speaker=1, seed=2)
    chunks = iter(long)
    next(chunks)
    chunks.close()  # the client went away
    assert np.array_equal(other.result(), reference(model, num_samples=400, speaker=1, seed=2))
    deadline = time.monotonic() + 10
    while engine.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.requests == 0
    assert len(sizes) < 100_000 // 16  # it stopped long before its end


def test_max_batch_makes_later_requests_wait(engine_factory, monkeypatch):
    model = make_model()
    sizes = slow_runs(monkeypatch)
    engine = engine_factory(model, max_batch=2, step_samples=16)
    requests = [engine.submit(160, speaker=i % SPEAKERS, seed=i) for i in range(5)]
    for i, request in enumerate(requests):
        assert np.array_equal(request.result(), reference(model, num_samples=160, speaker=i % SPEAKERS, seed=i))
    assert max(sizes) == 2


def test_requests_waiting_at_a_step_boundary_all_join_there(engine_factory, held_runs):
    """Requests submitted during a step all join at the next boundary, up to max_batch; slots of
    streams cancelled meanwhile, running or still waiting, are free for them at that boundary."""
    model = make_model()
    engine = engine_factory(model, max_batch=4, step_samples=16, chunk_size=16)
    specs = [(400, i % SPEAKERS, 20 + i) for i in range(7)]
    requests = [engine.submit(specs[0][0], speaker=specs[0][1], seed=specs[0][2])]
    assert held_runs.batch() == 1  # the engine is inside the first request's first step
    requests += [engine.submit(n, speaker=s, seed=seed) for n, s, seed in specs[1:4]]
    held_runs.step()
    assert held_runs.batch() == 4  # the three submitted meanwhile joined together
    for request in requests[1:3]:
        request.cancel()
    engine.submit(400, speaker=0, seed=99).cancel()  # before it ever ran
    requests += [engine.submit(n, speaker=s, seed=seed) for n, s, seed in specs[4:]]
    held_runs.step()
    assert held_runs.batch() == 4  # the two freed slots taken at once by the first two live waiting requests
    assert [s.request for s in engine._active] == [requests[i] for i in (0, 3, 4, 5)]  # not the cancelled one
    held_runs.run_free()
    for i in (0, 3, 4, 5, 6):
        n, s, seed = specs[i]
        assert np.array_equal(requests[i].result(), reference(model, num_samples=n, speaker=s, seed=seed)), i


def test_close_fails_running_requests_and_refuses_new_ones(monkeypatch):
    model = make_model()
    slow_runs(monkeypatch)
    engine = BatchingEngine(model, step_samples=16, chunk_size=16)
    running = engine.submit(100_000, speaker=0, seed=0)
    chunks = iter(running)
    next(chunks)
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        for _ in chunks:
            pass
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(10, speaker=0)
    engine.close()  # twice is fine


def test_failure_in_the_engine_thread_reaches_the_requests(engine_factory, monkeypatch):
    model = make_model()
    engine = engine_factory(model, step_samples=16)
    calls = []
    original = generation.BACKENDS["numba"].run

    def failing(self, *args, **kwargs):
        calls.append(1)
        time.sleep(0.01)  # both requests are in the batch by the third call
        if len(calls) == 3:
            raise RuntimeError("simulated kernel failure")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(generation.BACKENDS["numba"], "run", failing)
    requests = [engine.submit(1000, speaker=i, seed=i) for i in range(2)]
    for request in requests:
        with pytest.raises(RuntimeError, match="simulated kernel failure"):
            request.result()
    # the engine goes on with fresh state
    expected = reference(model, num_samples=100, speaker=2, seed=9)
    assert np.array_equal(engine.submit(100, speaker=2, seed=9).result(), expected)
