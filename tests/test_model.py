"""Tests for wavekit.model (causality, receptive field, config, save/load, conditioning)
and the toy training job in wavekit.toy."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wavekit import toy
from wavekit.model import ConditioningUpsampler, WaveNet, WaveNetConfig

HEADS = ("mulaw", "mol")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tiny(**overrides) -> WaveNetConfig:
    """A few-channel config that runs in milliseconds; `overrides` replace any field."""
    values = dict(layers=4, stacks=1, residual_channels=8, gate_channels=8, skip_channels=16, mixtures=2)
    values.update(overrides)
    return WaveNetConfig(**values)


def _model(config: WaveNetConfig, seed: int = 0) -> WaveNet:
    torch.manual_seed(seed)
    return WaveNet(config).eval()


def _audio(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, length, generator=_gen(seed)) * 1.8 - 0.9


def _mel(config: WaveNetConfig, batch: int, frames: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, config.mel_channels, frames, generator=_gen(seed))


# ---------------------------------------------------------------- causality


@pytest.mark.parametrize("conditioned", [False, True], ids=["plain", "mel+speaker"])
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("kernel_size", [2, 3])
def test_prediction_depends_only_on_past_audio(kernel_size: int, head: str, conditioned: bool) -> None:
    extra = dict(mel_channels=3, upsample_scales=(2, 2), num_speakers=2) if conditioned else {}
    config = _tiny(kernel_size=kernel_size, head=head, **extra)
    model = _model(config)
    length, t0 = 96, 60
    mel = _mel(config, 2, length // config.hop_length) if conditioned else None
    speaker = torch.tensor([0, 1]) if conditioned else None

    before = _audio(2, length)
    after = before.clone()
    before[:, t0], after[:, t0] = 0.5, -0.5  # different mu-law bins and different scalars
    with torch.no_grad():
        p_before, p_after = model.predict(before, mel, speaker), model.predict(after, mel, speaker)
        lp_before, lp_after = model.log_prob(before, mel, speaker), model.log_prob(after, mel, speaker)

    # predict[..., t] sees audio[:, :t]: positions up to and including t0 must not move.
    torch.testing.assert_close(p_after[..., : t0 + 1], p_before[..., : t0 + 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(lp_after[:, :t0], lp_before[:, :t0], rtol=0, atol=1e-6)
    # ...and the next step must react, or the network is disconnected from its input.
    assert (p_after[..., t0 + 1] - p_before[..., t0 + 1]).abs().amax() > 1e-4
    assert (lp_after[:, t0 + 1] - lp_before[:, t0 + 1]).abs().amin() > 1e-6


def test_conditioning_reaches_the_output() -> None:
    config = _tiny(mel_channels=3, upsample_scales=(2, 2), num_speakers=2)
    model = _model(config)
    audio = _audio(1, 32)
    mel = _mel(config, 1, 8)
    with torch.no_grad():
        base = model.predict(audio, mel, 0)
        other_speaker = model.predict(audio, mel, 1)
        other_mel = model.predict(audio, mel + 1.0, 0)
    assert (other_speaker - base).abs().amax(dim=1).gt(1e-4).all()  # global: every position
    assert (other_mel - base).abs().amax(dim=1).gt(1e-4).all()


# ---------------------------------------------------------------- receptive field

RF_CASES = [  # (kernel_size, layers, stacks, receptive field written out by hand)
    (2, 4, 1, 1 + (1 + 2 + 4 + 8)),
    (3, 4, 1, 1 + 2 * (1 + 2 + 4 + 8)),
    (2, 6, 2, 1 + 2 * (1 + 2 + 4)),
    (3, 6, 2, 1 + 2 * 2 * (1 + 2 + 4)),
]


def _influence_by_gradient(model: WaveNet, length: int, t: int) -> torch.Tensor:
    """Input positions whose value moves the (continuous-input) prediction at step t."""
    audio = (_audio(1, length) * 0.5).requires_grad_(True)
    weights = torch.randn(model.distribution.params_channels, generator=_gen(2))
    (model.predict(audio)[0, :, t] @ weights).backward()
    return audio.grad[0].ne(0).nonzero().flatten()


def _influence_by_perturbation(model: WaveNet, length: int, t: int) -> torch.Tensor:
    """Same, by perturbing one position per batch row (works for the mu-law embedding).

    In float64: the far end of the receptive field moves the output by as little as ~1e-7.
    """
    rows = _audio(1, length).double().repeat(length + 1, 1)
    positions = torch.arange(length)
    rows[positions + 1, positions] = -rows[positions + 1, positions]  # row i + 1 flips sample i
    with torch.no_grad():
        params = model.double().predict(rows)[:, :, t]
    return (params[1:] - params[0]).abs().amax(dim=1).gt(1e-12).nonzero().flatten()


@pytest.mark.parametrize(("kernel_size", "layers", "stacks", "expected"), RF_CASES)
@pytest.mark.parametrize("head", HEADS)
def test_receptive_field_is_exact(kernel_size: int, layers: int, stacks: int, expected: int, head: str) -> None:
    model = _model(_tiny(kernel_size=kernel_size, layers=layers, stacks=stacks, head=head))
    assert model.receptive_field == expected
    rf = model.receptive_field
    length, t = rf + 30, rf + 10
    measure = _influence_by_gradient if head == "mol" else _influence_by_perturbation
    assert measure(model, length, t).tolist() == list(range(t - rf, t))


# ---------------------------------------------------------------- config

CONFIGS = [
    WaveNetConfig(),
    _tiny(kernel_size=3, head="mol", bits=8, dropout=0.1),
    _tiny(mel_channels=4, upsample_scales=(2, 5), fmin=50.0, fmax=7000.0, n_fft=256),
    _tiny(num_speakers=2, speaker_channels=4, speaker_names=("alice", "bob")),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_config_round_trips_through_dict_and_json(config: WaveNetConfig) -> None:
    assert WaveNetConfig.from_dict(config.to_dict()) == config
    assert WaveNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_config_rejects_unknown_keys() -> None:
    values = _tiny().to_dict() | {"dilation_cycle": 10}
    with pytest.raises(ValueError, match="dilation_cycle"):
        WaveNetConfig.from_dict(values)


@pytest.mark.parametrize(
    ("field", "value", "extra"),
    [
        ("kernel_size", 1, {}),
        ("gate_channels", 7, {}),
        ("head", "foo", {}),
        ("layers", 6, {"stacks": 4}),
        ("residual_channels", 0, {}),
        ("dropout", 1.0, {}),
        ("speaker_names", ("a", "b", "c"), {"num_speakers": 2}),
        ("speaker_names", ("a", "a"), {"num_speakers": 2}),
        ("upsample_scales", (2.7, 4), {}),
        ("log_scale_min", math.nan, {}),
        ("fmax", 0.0, {"mel_channels": 8}),
        ("layers", "many", {}),
        ("sample_rate", 16000.5, {}),
    ],
)
def test_config_rejects_invalid_values(field: str, value: object, extra: dict) -> None:
    with pytest.raises(ValueError, match=field):
        _tiny(**{field: value}, **extra)


@pytest.mark.parametrize(
    "values", [{}, {"mel_channels": 5, "upsample_scales": (2, 2), "num_speakers": 3, "head": "mol", "kernel_size": 3}]
)
def test_flops_per_sample_counts_every_weight_of_a_step_once(values: dict) -> None:
    """One multiply-add per weight of the step's products: not the speaker table, embedding or upsampler."""
    model = _model(_tiny(**values))
    per_step = ("conv.weight", "cond.weight", "residual.weight", "skip.weight", "out1.weight", "out2.weight")
    weights = sum(p.numel() for name, p in model.named_parameters() if name.endswith(per_step))
    assert model.config.flops_per_sample == 2 * weights


def test_dilations_cycle_per_stack() -> None:
    assert _tiny(layers=6, stacks=2).dilations == [1, 2, 4, 1, 2, 4]
    assert _tiny(layers=3, stacks=1).dilations == [1, 2, 4]


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize("head", HEADS)
def test_save_and_load_round_trip(tmp_path: Path, head: str) -> None:
    config = _tiny(
        head=head, mel_channels=3, upsample_scales=(2, 2), num_speakers=2, speaker_names=("alice", "bob")
    )
    model = _model(config)
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = WaveNet.from_file(path)

    assert loaded.config == config
    assert not loaded.training
    audio, mel = _audio(2, 32), _mel(config, 2, 8)
    with torch.no_grad():
        assert torch.equal(loaded.predict(audio, mel, [1, 0]), model.predict(audio, mel, [1, 0]))


def _write_garbage(path: Path) -> None:
    path.write_bytes(b"\x00\x01 definitely not safetensors " * 20)


def _write_truncated_model(path: Path) -> None:
    _model(_tiny()).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _write_foreign_safetensors(path: Path) -> None:
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize(
    "write",
    [_write_garbage, _write_truncated_model, _write_foreign_safetensors, None],
    ids=["garbage", "truncated", "foreign-safetensors", "missing"],
)
def test_loading_a_non_model_file_names_the_path(tmp_path: Path, write: Callable[[Path], None] | None) -> None:
    path = tmp_path / "bad.safetensors"
    if write is not None:  # None: the file does not exist
        write(path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        WaveNet.from_file(path)


# ---------------------------------------------------------------- conditioning


@pytest.fixture(scope="module")
def conditioned_model() -> WaveNet:
    return _model(_tiny(mel_channels=3, upsample_scales=(2, 2), num_speakers=2))


@pytest.mark.parametrize(
    ("case", "word"),
    [
        ("missing mel", "mel"),
        ("wrong mel channels", "mel"),
        ("mel frames x hop != T", "mel"),
        ("mel batch mismatch", "mel"),
        ("non-finite mel", "mel"),
        ("missing speaker", "speaker"),
        ("speaker too large", "speaker"),
        ("negative speaker", "speaker"),
        ("speaker count mismatch", "speaker"),
    ],
)
def test_bad_conditioning_raises(conditioned_model: WaveNet, case: str, word: str) -> None:
    audio = _audio(2, 32)
    mel = _mel(conditioned_model.config, 2, 8)
    bad_mel = mel.clone()
    bad_mel[0, 0, 0] = math.nan
    mel_arg, speaker_arg = {
        "missing mel": (None, 0),
        "wrong mel channels": (torch.zeros(2, 4, 8), 0),
        "mel frames x hop != T": (mel[..., :7], 0),
        "mel batch mismatch": (torch.zeros(3, 3, 8), 0),
        "non-finite mel": (bad_mel, 0),
        "missing speaker": (mel, None),
        "speaker too large": (mel, 2),
        "negative speaker": (mel, [0, -1]),
        "speaker count mismatch": (mel, [0, 1, 1]),
    }[case]
    with pytest.raises(ValueError, match=word):
        conditioned_model.log_prob(audio, mel_arg, speaker_arg)


@pytest.mark.parametrize(
    ("config", "kwargs", "word"),
    [
        (_tiny(), {"mel": torch.zeros(1, 3, 8)}, "mel"),
        (_tiny(), {"speaker": 0}, "speaker"),
        (_tiny(mel_channels=3, upsample_scales=(2, 2)), {"mel": torch.zeros(1, 3, 8), "speaker": 0}, "speaker"),
    ],
)
def test_unexpected_conditioning_raises(config: WaveNetConfig, kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        _model(config).predict(_audio(1, 32), **kwargs)


def test_speakers_are_taken_by_name_too() -> None:
    model = _model(_tiny(num_speakers=2, speaker_names=("ann", "bob")))
    audio = _audio(2, 32)
    with torch.no_grad():
        assert torch.equal(model.log_prob(audio, speaker=["bob", "ann"]), model.log_prob(audio, speaker=[1, 0]))
        assert torch.equal(model.log_prob(audio, speaker="bob"), model.log_prob(audio, speaker=1))
    with pytest.raises(ValueError, match="speaker: 'carl' is unknown; give one of ann, bob"):
        model.log_prob(audio, speaker="carl")


def test_audio_is_taken_as_float32_and_checked() -> None:
    model = _model(_tiny(head="mol", mixtures=2))
    audio = _audio(2, 32)
    with torch.no_grad():
        assert torch.equal(model.log_prob(audio.double()), model.log_prob(audio))
    for bad in (audio[0], torch.zeros(2, 32, dtype=torch.long), audio.numpy()):
        with pytest.raises(ValueError, match=r"^audio: expected float samples \[B, T\]"):
            model.log_prob(bad)


def test_mel_features_feed_the_model_end_to_end() -> None:
    config = _tiny(mel_channels=8, upsample_scales=(4, 4), n_fft=256, num_speakers=2)
    model = _model(config)
    hop, frames = config.hop_length, 10
    audio = toy.periodic_signal(2 * (frames * hop + 5)).reshape(2, -1) * torch.tensor([[1.0], [0.5]])

    mel = config.mel(audio)  # the 5 trailing samples get no frame
    assert mel.shape == (2, config.mel_channels, frames)
    assert config.mel(audio[0]).shape == (config.mel_channels, frames)
    audio = audio[:, : frames * hop]
    with torch.no_grad():
        log_prob = model.log_prob(audio, mel, [0, 1])
        shared = model.log_prob(audio, mel[0], 1)  # one [M, F] mel and one id serve the whole batch
    assert log_prob.shape == (2, frames * hop)
    assert torch.isfinite(log_prob).all() and (log_prob <= 0).all()
    assert shared.shape == (2, frames * hop)
    with pytest.raises(ValueError, match="mel_channels"):
        _tiny().mel(audio)


# ---------------------------------------------------------------- toy job


def test_periodic_signal_is_deterministic_and_periodic() -> None:
    signal = toy.periodic_signal(1000)
    assert signal.dtype == torch.float32 and signal.shape == (1000,)
    assert torch.equal(signal, toy.periodic_signal(1000))
    assert not torch.equal(signal, toy.periodic_signal(1000, seed=1))
    assert torch.equal(signal[40:], signal[:-40])  # 400 Hz at 16 kHz
    assert signal.abs().max().item() == pytest.approx(0.6, abs=1e-6)
    assert toy.toy_config().receptive_field > 40


def test_toy_train_is_deterministic_and_leaves_eval_mode() -> None:
    audio = toy.periodic_signal(2000)
    runs = []
    for _ in range(2):
        model = _model(toy.toy_config())
        runs.append(toy.train(model, audio, 3, segment=256, batch_size=2, seed=5))
        assert not model.training
    assert len(runs[0]) == 3 and runs[0] == runs[1]


TOY_STEPS = 60  # measured: ~0.12 s/step on 2 cores, NLL below 0.1 bit/sample after ~50 steps
TOY_MAX_BITS = 1.0
TOY_MIN_GAIN_BITS = 5.0


def test_toy_training_learns_the_periodic_signal() -> None:
    model = _model(toy.toy_config())
    fresh = toy.periodic_signal(16000 + 2048)[16000:]  # continues past the training audio
    initial = toy.bits_per_sample(model, fresh)
    assert initial == pytest.approx(math.log2(256), abs=0.5)  # near-uniform over 256 mu-law bins

    losses = toy.train(model, toy.periodic_signal(16000), TOY_STEPS)
    final = toy.bits_per_sample(model, fresh)

    assert len(losses) == TOY_STEPS and all(math.isfinite(x) for x in losses)
    assert final < TOY_MAX_BITS, f"toy model reached only {final:.3f} bits/sample"
    assert initial - final >= TOY_MIN_GAIN_BITS
    assert toy.bits_per_sample(model, fresh.reshape(2, -1)) < TOY_MAX_BITS + 0.1  # [B, T] input


def test_mel_frequency_range_is_checked():
    with pytest.raises(ValueError, match="fmin"):
        WaveNetConfig(mel_channels=8, fmin=9000.0)
    with pytest.raises(ValueError, match="fmax"):
        WaveNetConfig(mel_channels=8, fmax=12000.0)
    WaveNetConfig(mel_channels=0, fmin=9000.0)  # unused without mel conditioning


def test_from_file_with_a_non_mapping_config_names_the_file(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"wavekit_config": "[1, 2]"})
    with pytest.raises(ValueError, match="odd.safetensors"):
        WaveNet.from_file(path)


@pytest.mark.parametrize("scales", [(4, 4, 4, 4), (2, 3), (5,)])
def test_upsampler_equals_stretch_then_smooth(scales):
    """The polyphase form computes exactly the nearest-neighbour stretch followed by the
    zero-padded (2s + 1)-tap convolution, values and gradients, for trained (random) taps."""

    def reference(up, mel):
        c = mel.unsqueeze(1)
        for scale, smooth in zip(up.scales, up.smoothers):
            c = smooth(c.repeat_interleave(scale, dim=-1))
        return c.squeeze(1)

    torch.manual_seed(0)
    up = ConditioningUpsampler(scales)
    with torch.no_grad():
        for smooth in up.smoothers:
            smooth.weight.normal_()
    mel = torch.randn(2, 5, 7, requires_grad=True)
    expected, got = reference(up, mel), up(mel)
    assert got.shape == (2, 5, 7 * math.prod(scales))
    tolerance = 1e-6 * expected.abs().max().item()
    assert (got - expected).abs().max().item() <= tolerance
    grads_expected = torch.autograd.grad(expected.square().sum(), [mel, *up.parameters()])
    grads_got = torch.autograd.grad(got.square().sum(), [mel, *up.parameters()])
    for a, b in zip(grads_expected, grads_got):
        assert (a - b).abs().max().item() <= 1e-5 * a.abs().max().item()


@pytest.mark.parametrize("scales", [(4, 4, 4, 4), (2, 3), (5,), (8, 8, 4)])
@pytest.mark.parametrize("frames", [1, 2, 37])
def test_upsampler_window_is_a_slice_of_the_whole(scales, frames):
    """`window` computes only what a span needs, and equals the slice bit for bit (the
    generator upsamples span by span, and serving must match `generate` exactly)."""
    torch.manual_seed(frames)
    up = ConditioningUpsampler(scales)
    with torch.no_grad():
        for smooth in up.smoothers:
            smooth.weight.normal_()
        mel = torch.randn(2, 3, frames)
        whole = up(mel)
        total = whole.shape[-1]
        bounds = [(0, total), (0, 1), (total - 1, total)] + [
            tuple(sorted(torch.randint(0, total + 1, (2,)).tolist())) for _ in range(100)
        ]
        for start, stop in bounds:
            if start < stop:
                assert torch.equal(up.window(mel, start, stop), whole[..., start:stop]), (start, stop)
