"""Tests for wavekit.generation: the queued backends against the full network, the
samplers against the naive reference, streaming, seeding, per-stream lengths, output
values, temperature, progress reporting and argument validation.

All models are tiny (a few layers, 16-32 channels) so the file runs in seconds; every
comparison uses lengths of 2-6 receptive fields so the queues wrap around many times.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import pytest
import torch

import wavekit.generation as generation
from wavekit.audio import mulaw_decode, mulaw_encode
from wavekit.generation.numba_backend import NumbaQueuedBackend
from wavekit.generation.weights import InferenceWeights
from wavekit.model import WaveNet, WaveNetConfig

# Eager PyTorch on these tiny tensors (the reference network, the naive sampler and the
# "torch" backend: thousands of small ops) runs on one intra-op thread. With the default
# 2 threads on a 2-core machine that other processes also load, every op's OpenMP region
# waits for a descheduled thread and these tests slow down ~40x (minutes, not seconds).
# The numba backend keeps the real thread count: it splits work by torch.get_num_threads().


@contextlib.contextmanager
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _eager_single_threaded(fn, default_backend: str):
    """`fn`, run on one intra-op thread when it runs eager PyTorch (backend "torch")."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if kwargs.get("backend", default_backend) != "torch":
            return fn(*args, **kwargs)
        with one_thread():
            return fn(*args, **kwargs)

    return wrapper


def stream(*args, **kwargs):
    """`wavekit.generation.stream`, single-threaded for backend "torch" while it is consumed."""
    if kwargs.get("backend") != "torch":
        yield from generation.stream(*args, **kwargs)
        return
    with one_thread():
        yield from generation.stream(*args, **kwargs)


generate = _eager_single_threaded(generation.generate, "auto")
teacher_forced_params = _eager_single_threaded(generation.teacher_forced_params, "auto")
naive_generate = _eager_single_threaded(generation.naive_generate, "torch")  # always eager


def predict(model: WaveNet, *args) -> torch.Tensor:
    """`model.predict` (teacher-forced params of the full network), single-threaded."""
    with one_thread():
        return model.predict(*args)


MEL_CHANNELS = 5
HOP = 4  # upsample_scales (2, 2)
SPEAKERS = 3
BACKENDS = ("torch", "numba")


def make_model(*, mel: bool = True, speakers: bool = True, seed: int = 0, **overrides) -> WaveNet:
    """A tiny WaveNet in eval mode with reproducible random weights."""
    config = dict(
        layers=6,
        stacks=2,
        kernel_size=2,
        residual_channels=16,
        gate_channels=32,
        skip_channels=32,
        mixtures=4,  # 12 params split evenly over 2 or 4 threads: batch-1 numba runs take the split path
        mel_channels=MEL_CHANNELS if mel else 0,
        upsample_scales=(2, 2),
        num_speakers=SPEAKERS if speakers else 0,
    )
    config.update(overrides)
    torch.manual_seed(seed)
    return WaveNet(WaveNetConfig(**config)).eval()


def random_mel(batch: int | None, frames: int, seed: int = 0) -> torch.Tensor:
    """Log-mel-like frames [batch, M, frames] (or [M, frames] for batch None)."""
    g = torch.Generator().manual_seed(seed)
    shape = (MEL_CHANNELS, frames) if batch is None else (batch, MEL_CHANNELS, frames)
    return torch.randn(shape, generator=g)


def random_audio(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, length, generator=g) * 2 - 1


def bin_centers(model: WaveNet) -> torch.Tensor:
    return model.distribution.bin_centers()


# --------------------------------------------------------------------------------------
# 1. Exactness: the queued backends compute the same params as the full network.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", ["mulaw", "mol"])
@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("batch", [13, 3, 1])  # 13: micro-kernel tiles of 6 and the leftovers, two stream groups
def test_teacher_forced_params_match_predict(batch, kernel_size, head, backend):
    model = make_model(kernel_size=kernel_size, head=head)
    frames = 24
    length = frames * HOP
    assert length > 3 * model.receptive_field  # every queue wraps around several times
    audio = random_audio(batch, length, seed=1)
    mel = random_mel(batch, frames, seed=2)
    speaker = [(0, 2, 1)[b % 3] for b in range(batch)]
    expected = predict(model, audio, mel, speaker)
    got = teacher_forced_params(model, audio, mel=mel, speaker=speaker, backend=backend)
    assert got.shape == expected.shape == (batch, model.distribution.params_channels, length)
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", ["mulaw", "mol"])
@pytest.mark.parametrize("kernel_size", [2, 3])
def test_teacher_forced_params_unconditioned(kernel_size, head, backend):
    model = make_model(mel=False, speakers=False, layers=5, stacks=1, kernel_size=kernel_size, head=head)
    length = 2 * model.receptive_field + 13
    audio = random_audio(2, length, seed=3)
    expected = predict(model, audio)
    got = teacher_forced_params(model, audio, backend=backend)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4
    assert torch.equal(teacher_forced_params(model, audio.double(), backend=backend), got)  # taken as float32


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("head", ["mulaw", "mol"])
def test_teacher_forced_params_with_odd_channel_counts(head, batch):
    """Widths that are no multiple of the kernel's 16-column panels: the padding must stay
    out of the result. With two threads a lone stream is split (22 gate pairs, 26 skip
    rows and 256 or 12 params halve evenly), so each part's share is padded too."""
    model = make_model(head=head, residual_channels=12, gate_channels=44, skip_channels=26)
    weights = InferenceWeights.from_model(model)
    audio = random_audio(batch, 45 * HOP, seed=12)
    mel = random_mel(batch, 45, seed=13)
    speaker = [b % SPEAKERS for b in range(batch)]
    expected = predict(model, audio, mel, speaker)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert NumbaQueuedBackend(weights, model.distribution, batch).parts == (2 if batch == 1 else 1)
        for backend in BACKENDS:
            got = teacher_forced_params(model, audio, mel=mel, speaker=speaker, backend=backend)
            assert (got - expected).abs().max().item() < 1e-4, backend
    finally:
        torch.set_num_threads(saved)


def _count_mel_spans(monkeypatch) -> list[int]:
    """Record the number of steps of every mel span the generator hands its backend."""
    spans: list[int] = []
    original = generation._spans

    def spy(*args):
        for start, stop, cond in original(*args):
            assert cond.shape[2] == stop - start
            spans.append(stop - start)
            yield start, stop, cond

    monkeypatch.setattr(generation, "_spans", spy)
    return spans


@pytest.mark.parametrize("backend", BACKENDS)
def test_teacher_forced_params_in_small_mel_spans(monkeypatch, backend):
    model = make_model(kernel_size=3, head="mol")
    audio = random_audio(2, 60, seed=4)
    mel = random_mel(2, 15, seed=5)
    expected = predict(model, audio, mel, [1, 2])
    per_step = generation.BACKENDS[backend].floats_per_step(InferenceWeights.from_model(model), 2)
    monkeypatch.setattr(generation, "SPAN_BUDGET", 7 * per_step)
    spans = _count_mel_spans(monkeypatch)
    got = teacher_forced_params(model, audio, mel=mel, speaker=[1, 2], backend=backend)
    assert spans == [7] * 8 + [4]
    assert (got - expected).abs().max().item() < 1e-4


# --------------------------------------------------------------------------------------
# 2. Fast paths against the naive reference.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("batch", [3, 1])
def test_mulaw_backends_and_naive_draw_identical_samples(batch, temperature):
    model = make_model(kernel_size=3)
    mel = random_mel(batch, 20, seed=6)
    speaker = [2, 0, 1][:batch]
    kwargs = dict(mel=mel, speaker=speaker, temperature=temperature, seed=11)
    fast = generate(model, backend="numba", **kwargs)
    eager = generate(model, backend="torch", **kwargs)
    reference = naive_generate(model, **kwargs)
    assert reference.shape == (batch, 80)
    assert torch.equal(fast, reference)
    assert torch.equal(eager, reference)
    assert len(reference.unique()) > 20  # a real draw, not a constant


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_naive_window_covers_the_receptive_field(kernel_size):
    """The reference must see the whole receptive field. The oldest tap of every layer and
    the logits are amplified so that the single oldest sample visibly moves the draws."""
    model = make_model(mel=False, layers=4, stacks=1, kernel_size=kernel_size)
    with torch.no_grad():
        for layer in model.layers:
            layer.conv.weight[:, :, 0].mul_(3)
        model.out2.weight.mul_(20)
    for seed in (0, 1):
        kwargs = dict(speaker=[0, 1, 2], seed=seed)
        assert torch.equal(naive_generate(model, 100, **kwargs), generate(model, 100, **kwargs)), seed


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_mol_8bit_backends_and_naive_draw_identical_samples(temperature):
    # With 256 bins, float rounding of the params moves a draw to another bin with
    # probability ~1e-5 per sample, so short runs agree exactly.
    model = make_model(head="mol", bits=8)
    mel = random_mel(2, 12, seed=7)
    kwargs = dict(mel=mel, speaker=[1, 2], temperature=temperature, seed=5)
    reference = naive_generate(model, **kwargs)
    assert torch.equal(generate(model, backend="torch", **kwargs), reference)
    assert torch.equal(generate(model, backend="numba", **kwargs), reference)
    assert len(reference.unique()) > 10


@pytest.mark.parametrize("batch", [2, 1])
def test_mol_16bit_backends_agree_up_to_bin_rounding(batch):
    """With 65536 bins an ulp in the params may legitimately pick the neighbouring bin
    (after which the streams diverge), so require: identical up to the first difference,
    and that difference is one bin apart. Teacher forcing checks the params themselves."""
    model = make_model(head="mol", bits=16, kernel_size=3)
    mel = random_mel(batch, 20, seed=8)
    kwargs = dict(mel=mel, speaker=[0, 2][:batch], temperature=0.8, seed=21)
    a = generate(model, backend="numba", **kwargs)
    b = generate(model, backend="torch", **kwargs)
    assert len(b.unique()) > 20
    width = model.distribution.bin_width
    for stream_a, stream_b in zip(a, b):
        differ = (stream_a != stream_b).nonzero()
        if len(differ):
            first = differ[0, 0]
            assert (stream_a[first] - stream_b[first]).abs().item() <= 1.01 * width, first


# --------------------------------------------------------------------------------------
# 3. Streaming.
# --------------------------------------------------------------------------------------


def _streamed(model, chunk_size, **kwargs) -> torch.Tensor:
    chunks = list(stream(model, chunk_size=chunk_size, **kwargs))
    batch = chunks[0].shape[0]
    for chunk in chunks:
        assert chunk.dim() == 2 and chunk.shape[0] == batch
        assert 1 <= chunk.shape[1] <= chunk_size
    return torch.cat(chunks, dim=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_stream_chunks_concatenate_to_generate(chunk_size, backend):
    model = make_model()
    kwargs = dict(mel=random_mel(2, 15, seed=9), speaker=[1, 0], seed=3, backend=backend)
    expected = generate(model, **kwargs)
    assert expected.shape == (2, 60)
    assert torch.equal(_streamed(model, chunk_size, **kwargs), expected)


@pytest.mark.parametrize("head", ["mulaw", "mol"])
def test_stream_unconditioned_model(head):
    model = make_model(mel=False, head=head)
    kwargs = dict(speaker=[2, 1, 0], seed=8)
    expected = generate(model, 45, **kwargs)
    assert torch.equal(_streamed(model, 7, num_samples=45, **kwargs), expected)
    # the number of chunks is ceil(45 / 7), the last one short
    assert [c.shape[1] for c in stream(model, 45, chunk_size=7, **kwargs)] == [7] * 6 + [3]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spans_of", [1, 5])
def test_mel_upsampled_in_many_spans(monkeypatch, backend, spans_of):
    model = make_model(kernel_size=3)
    kwargs = dict(mel=random_mel(2, 15, seed=10), speaker=[2, 2], seed=4, backend=backend)
    expected = generate(model, **kwargs)
    per_step = generation.BACKENDS[backend].floats_per_step(InferenceWeights.from_model(model), 2)
    monkeypatch.setattr(generation, "SPAN_BUDGET", spans_of * per_step)
    spans = _count_mel_spans(monkeypatch)
    assert torch.equal(generate(model, **kwargs), expected)
    assert max(spans) == spans_of and sum(spans) == 60
    spans.clear()
    assert torch.equal(_streamed(model, 7, **kwargs), expected)
    assert max(spans) <= min(spans_of, 7) and sum(spans) == 60


# --------------------------------------------------------------------------------------
# 4. Seeds.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["mulaw", "mol"])
def test_seed_reproducible_and_distinct(head):
    model = make_model(head=head)
    kwargs = dict(mel=random_mel(2, 10, seed=11), speaker=[0, 1])
    a = generate(model, seed=123, **kwargs)
    assert torch.equal(generate(model, seed=123, **kwargs), a)
    b = generate(model, seed=124, **kwargs)
    assert not torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", ["mulaw", "mol"])
def test_stream_b_uses_seed_plus_b(head, backend):
    """Documented: stream b of a batch draws from a generator seeded with seed + b."""
    model = make_model(head=head, bits=8)
    mel = random_mel(3, 12, seed=12)
    speakers = [2, 0, 1]
    batch = generate(model, mel=mel, speaker=speakers, seed=40, backend=backend)
    for b in range(3):
        single = generate(model, mel=mel[b], speaker=speakers[b], seed=40 + b, backend=backend)
        assert torch.equal(batch[b : b + 1], single), b
    # hence stream 1 with seed s is stream 0 with seed s + 1 (same conditioning)
    shifted = generate(model, mel=mel[1:], speaker=speakers[1:], seed=41, backend=backend)
    assert torch.equal(shifted, batch[1:])


def test_seed_none_draws_fresh_noise():
    model = make_model(mel=False)
    a = generate(model, 40, speaker=[0, 1], seed=None)
    b = generate(model, 40, speaker=[0, 1], seed=None)
    assert a.shape == b.shape == (2, 40)
    assert torch.isin(a, bin_centers(model)).all()
    assert not torch.equal(a, b)


# --------------------------------------------------------------------------------------
# 5. Per-stream lengths.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["mulaw", "mol"])
def test_per_stream_lengths(head):
    model = make_model(mel=False, head=head)
    lengths = [30, 50, 10]
    speakers = [1, 2, 0]
    out = generate(model, lengths, speaker=speakers, seed=7)
    assert out.shape == (3, 50)
    for b, n in enumerate(lengths):
        assert (out[b, n:] == 0).all(), b
        assert torch.isin(out[b, :n], bin_centers(model)).all(), b  # no early zeros (0 is not a bin centre)
        single = generate(model, n, speaker=speakers[b], seed=7 + b)
        assert torch.equal(out[b : b + 1, :n], single), b
    assert torch.equal(naive_generate(model, lengths, speaker=speakers, seed=7), out)
    assert torch.equal(generate(model, lengths, speaker=speakers, seed=7, backend="torch"), out)


def test_per_stream_lengths_from_mel_list():
    model = make_model()
    mels = [random_mel(None, f, seed=f) for f in (6, 15, 3)]
    out = generate(model, mel=mels, speaker=[0, 1, 2], seed=2)
    assert out.shape == (3, 15 * HOP)
    for b, m in enumerate(mels):
        n = m.shape[-1] * HOP
        assert (out[b, n:] == 0).all(), b
        assert torch.isin(out[b, :n], bin_centers(model)).all(), b
    chunks = list(stream(model, mel=mels, speaker=[0, 1, 2], seed=2, chunk_size=16))
    assert torch.equal(torch.cat(chunks, dim=1), out)


def test_mel_list_stream_does_not_depend_on_other_streams():
    """Stream b of a mel-list batch must equal a single-stream run on its own mel.

    The conditioning is amplified and the temperature lowered so that a change in the
    upsampled mel of the last samples changes the draw, not just the probabilities.
    """
    model = make_model()
    with torch.no_grad():
        for layer in model.layers:
            layer.cond.weight.mul_(10)
        model.out2.weight.mul_(5)
    for seed in range(6):
        short, long = random_mel(None, 6, seed=100 + seed) * 2, random_mel(None, 15, seed=200 + seed)
        out = generate(model, mel=[short, long], speaker=[0, 1], temperature=0.3, seed=seed)
        single = generate(model, mel=short, speaker=0, temperature=0.3, seed=seed)
        assert torch.equal(out[:1, : 6 * HOP], single), seed


# --------------------------------------------------------------------------------------
# 6. Output values.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", ["mulaw", "mol"])
def test_samples_are_bin_centres_in_range(head, backend, temperature):
    model = make_model(head=head)  # mol: 16 bits
    out = generate(model, mel=random_mel(2, 15, seed=13), speaker=[0, 2], seed=9, temperature=temperature,
                   backend=backend)  # fmt: skip
    assert out.dtype == torch.float32
    assert out.abs().max().item() <= 1.0
    centres = mulaw_decode(torch.arange(256)) if head == "mulaw" else model.distribution.bin_centers()
    assert torch.isin(out, centres).all()
    if temperature > 1:  # a flat distribution reaches the extremes
        assert out.abs().max().item() > 0.5


# --------------------------------------------------------------------------------------
# 7. Temperature.
# --------------------------------------------------------------------------------------


def test_low_temperature_follows_the_argmax():
    """At temperature T the chosen bin's logit falls short of the best by d with
    probability <= 256 * exp(-d / T): at T = 0.05 a shortfall of 1 is impossible in
    practice, while at T = 1 it is common (the logits are scaled up to spread ~5)."""
    model = make_model(kernel_size=3)
    with torch.no_grad():
        model.out2.weight.mul_(10)
        model.out2.bias.mul_(10)
    mel = random_mel(3, 20, seed=14)
    speakers = [0, 1, 2]

    def shortfall(temperature: float) -> torch.Tensor:
        out = generate(model, mel=mel, speaker=speakers, seed=3, temperature=temperature)
        logits = predict(model, out, mel, speakers)
        chosen = logits.gather(1, mulaw_encode(out).unsqueeze(1)).squeeze(1)
        return logits.amax(dim=1) - chosen

    cold, warm, hot = shortfall(0.05), shortfall(0.2), shortfall(1.0)
    assert cold.max().item() < 1.0
    assert hot.max().item() > 1.0
    assert cold.mean() < warm.mean() < hot.mean()


# --------------------------------------------------------------------------------------
# 8. Progress.
# --------------------------------------------------------------------------------------


def test_progress_callback_counts_up_to_total():
    model = make_model(mel=False)
    calls = []
    chunks = list(stream(model, [30, 50], speaker=[0, 1], seed=1, chunk_size=16,
                         progress=lambda done, total: calls.append((done, total))))  # fmt: skip
    assert len(chunks) == 4
    done = [d for d, _ in calls]
    assert all(total == 50 for _, total in calls)
    assert all(a < b for a, b in zip(done, done[1:]))
    assert done[-1] == 50 and len(done) >= 2

    calls.clear()
    out = generate(model, 20, speaker=2, seed=1, progress=lambda done, total: calls.append((done, total)))
    assert out.shape == (1, 20)
    assert calls and calls[-1] == (20, 20)
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:]))


def test_progress_bar_does_not_change_output(capsys):
    model = make_model(mel=False)
    expected = generate(model, 30, speaker=1, seed=2)
    assert torch.equal(generate(model, 30, speaker=1, seed=2, progress=True), expected)
    assert "generating" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# 9. Bad input.
# --------------------------------------------------------------------------------------


def raises_naming(argument: str):
    """ValueError whose message names `argument` (as a whole word)."""
    return pytest.raises(ValueError, match=rf"\b{argument}\b")


# Bad arguments for a mel + speaker model; the defaults are a valid 10-frame mel and speaker 0.
BAD_CONDITIONED = [
    (dict(num_samples=0), "num_samples"),  # also disagrees with the mel: either may be named,
    (dict(num_samples=-5), "num_samples"),  # but the message must name num_samples
    (dict(num_samples=[40, 0]), "num_samples"),
    (dict(num_samples=41), "num_samples"),  # disagrees with the mel's 10 frames x 4
    (dict(mel=torch.zeros(1, MEL_CHANNELS + 1, 10)), "mel"),
    (dict(mel=None), "mel"),
    (dict(mel=[torch.zeros(MEL_CHANNELS, 4)], num_samples=16), "num_samples"),
    (dict(speaker=SPEAKERS), "speaker"),
    (dict(speaker=-1), "speaker"),
    (dict(speaker=[0, 3]), "speaker"),
    (dict(speaker=None), "speaker"),
    (dict(temperature=0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(batch_size=0), "batch_size"),
    (dict(speaker="nobody"), "speaker"),  # the test model's speakers have no names
    (dict(speaker=[None]), "speaker"),
    (dict(mel=np.zeros((1, MEL_CHANNELS, 10), np.float32)), "mel"),
    (dict(seed=1.5), "seed"),
    (dict(seed=-1), "seed"),
    (dict(seed=2**64), "seed"),
    (dict(batch_size=2, speaker=[0, 1, 2]), "batch_size"),
    (dict(backend="cuda-graphs"), "backend"),
]


@pytest.mark.parametrize("kwargs, argument", BAD_CONDITIONED)
def test_bad_arguments_raise_naming_them(kwargs, argument):
    model = make_model()
    call = dict(mel=torch.zeros(1, MEL_CHANNELS, 10), speaker=0, seed=0)
    call.update(kwargs)
    with raises_naming(argument):
        generate(model, **call)
    with raises_naming(argument):
        next(iter(stream(model, **call)))
    if "backend" not in call:
        with raises_naming(argument):
            naive_generate(model, **call)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(mel=torch.zeros(1, MEL_CHANNELS, 10)), "mel"),
        (dict(speaker=0), "speaker"),
        (dict(num_samples=None), "num_samples"),
        (dict(num_samples=0), "num_samples"),
        (dict(num_samples=-5), "num_samples"),
        (dict(num_samples=[30, -1]), "num_samples"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=True), "batch_size"),
        (dict(temperature=0.0), "temperature"),
    ],
)
def test_bad_arguments_unconditioned_model(kwargs, argument):
    model = make_model(mel=False, speakers=False)
    call = dict(num_samples=40, seed=0)
    call.update(kwargs)
    with raises_naming(argument):
        generate(model, **call)
    with raises_naming(argument):
        naive_generate(model, **call)


def test_bad_chunk_size_and_backend():
    model = make_model(mel=False, speakers=False)
    for chunk_size in (0, -1, True, 2.0):
        with raises_naming("chunk_size"):
            next(iter(stream(model, 10, chunk_size=chunk_size)))
    with raises_naming("backend"):
        teacher_forced_params(model, random_audio(1, 10), backend="fortran")


def test_naive_generate_refuses_train_mode():
    model = make_model(mel=False, speakers=False, dropout=0.1).train()
    with raises_naming("model"):
        naive_generate(model, 10, seed=0)


def test_speakers_as_an_array_a_range_or_a_tensor_give_one_stream_each():
    model = make_model(mel=False)
    expected = generate(model, 30, speaker=[0, 1], seed=2)
    for speaker in (np.array([0, 1]), range(2), torch.tensor([0, 1])):
        assert torch.equal(generate(model, 30, speaker=speaker, seed=2), expected)


def test_bad_lengths_and_mel_lists_raise_naming_them():
    model = make_model(speakers=False)
    plain = make_model(mel=False, speakers=False)
    with pytest.raises(ValueError, match=r"\bnum_samples\b"):
        generate(plain, 2.7)
    with pytest.raises(ValueError, match=r"\bnum_samples\b"):
        generate(plain, [])
    with pytest.raises(ValueError, match=r"\bmel\b"):
        generate(model, mel=[])
    with pytest.raises(ValueError, match=r"mel\[1\]"):
        generate(model, mel=[random_mel(None, 4), torch.zeros(MEL_CHANNELS + 1, 4)])
    with pytest.raises(ValueError, match=r"mel\[0\]"):
        generate(model, mel=[random_mel(1, 4)])


def test_generation_does_not_alias_live_weights():
    model = make_model(mel=False, speakers=False)
    weights = InferenceWeights.from_model(model)
    before = weights.out1_b.clone()
    with torch.no_grad():
        model.out1.bias.add_(1.0)
        model.embed.weight.add_(1.0)
    assert torch.equal(weights.out1_b, before)
    assert not torch.equal(weights.embed_table, model.embed.weight)
