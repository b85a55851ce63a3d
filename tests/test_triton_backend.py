"""The Triton backend (wavekit/generation/triton_backend.py): exact against `WaveNet.predict`
and the torch backend, per-step gate biases, streams joining and leaving through the serving
engine, where it may run, and that it compiles for a GPU (offline, for sm_90: no GPU needed)
within shared memory and without spilling its registers wholesale.

Without a CUDA device the kernel runs in Triton's CPU interpreter (TRITON_INTERPRET=1, set
by conftest.py), about 0.1 s per step for these tiny models, so clips are short. With one,
the same tests run the compiled kernel on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from wavekit.generation import BACKENDS, _backend_name, generate, teacher_forced_params
from wavekit.generation.weights import InferenceWeights
from wavekit.model import WaveNet, WaveNetConfig
from wavekit.serving import BatchingEngine

pytest.importorskip("triton")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
MEL, SPEAKERS, HOP = 5, 3, 4


def make_model(head: str, kernel_size: int, *, mel: bool = True, bits: int = 8, wide: bool = False) -> WaveNet:
    """Tiny, with widths that are no power of two, so every padded dimension is exercised.

    `wide`: 40 gate pairs and 40 hidden units (padded to 64), two chunks of 32 each.
    """
    torch.manual_seed(0)
    gate, skip = (80, 40) if wide else (20, 24)
    config = WaveNetConfig(
        layers=4, stacks=2, kernel_size=kernel_size, residual_channels=12, gate_channels=gate, skip_channels=skip,
        head=head, mixtures=3, bits=bits, mel_channels=MEL if mel else 0, upsample_scales=(2, 2), num_speakers=SPEAKERS,
    )  # fmt: skip
    return WaveNet(config).eval().to(DEVICE)


def random_mel(batch: int, frames: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, MEL, frames, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


@pytest.mark.parametrize(
    "head, kernel_size, batch, wide", [("mulaw", 2, 3, False), ("mol", 3, 17, False), ("mulaw", 3, 2, True)]
)
def test_teacher_forced_params_match_predict(head, kernel_size, batch, wide):
    """17 streams: two programs, the second with 15 rows past the batch. Wide: several chunks."""
    model = make_model(head, kernel_size, wide=wide)
    frames = model.receptive_field // HOP + 2  # past the receptive field: every queue wraps
    audio = (torch.rand(batch, frames * HOP, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9).to(DEVICE)
    mel, speaker = random_mel(batch, frames, seed=2), [b % SPEAKERS for b in range(batch)]
    expected = model.predict(audio, mel, torch.tensor(speaker, device=DEVICE))
    got = teacher_forced_params(model, audio, mel=mel, speaker=speaker, backend="triton")
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("head, kernel_size", [("mulaw", 3), ("mol", 2)])
def test_samples_equal_the_torch_backend(head, kernel_size):
    model = make_model(head, kernel_size)
    kwargs = dict(mel=random_mel(2, 12, seed=3), speaker=[2, 0], temperature=0.8, seed=5)
    got = generate(model, backend="triton", **kwargs)
    assert len(got.unique()) > 8
    assert torch.equal(got, generate(model, backend="torch", **kwargs))


def test_per_step_gate_bias_and_per_stream_temperature():
    """`run` with a bias for every step (the contract allows it) and one temperature per stream."""
    model = make_model("mulaw", 2, mel=False)
    weights = InferenceWeights.from_model(model)
    steps = 30
    bias = weights.static_bias(None, 2).expand(2, steps, -1, -1) + torch.linspace(-2, 2, steps, device=DEVICE)[
        None, :, None, None
    ]
    noise = torch.rand(2, 1, steps, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    runs = [BACKENDS[name](weights, model.distribution, 2).run(bias, noise, [0.7, 1.3]) for name in ("triton", "torch")]
    assert torch.equal(runs[0][0], runs[1][0])


def test_streams_join_and_leave_through_the_serving_engine():
    model = make_model("mulaw", 2, mel=False)
    with BatchingEngine(model, step_samples=7, chunk_size=20, backend="triton") as engine:
        requests = [engine.submit(n, speaker=s, seed=s) for n, s in ((45, 0), (30, 2))]
        results = [r.result() for r in requests]
    for (n, s), got in zip(((45, 0), (30, 2)), results):
        assert torch.equal(torch.from_numpy(got), generate(model, n, speaker=s, seed=s, backend="torch")[0].cpu())


def test_refused_on_the_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"^backend: 'triton' runs on CUDA"):
        _backend_name("triton", torch.device("cpu"))
    assert _backend_name("auto", torch.device("cuda")) == "torch"  # not chosen by default until measured


# Compiles the kernel for an H100 (sm_90) without a GPU and prints its shared memory and stack
# per thread. It runs in a process of its own, without TRITON_INTERPRET: under the interpreter
# triton.jit builds interpreter functions, which the compiler cannot take.
COMPILE = r"""
import json, os, subprocess, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from wavekit.generation.triton_backend import LAUNCH, _run_steps

shape = json.loads(sys.argv[1])
i64_pointers = {"previous_bin", "forced_bins", "dilations", "queue_offsets"}
scalars = {"batch": "i32", "t0": "i32", "steps": "i32", "queue_len": "i32", "bias_steps": "i32", "bias_step": "i32",
           "skip_scale": "fp32", "residual_scale": "fp32", "log_scale_min": "fp32", "half_levels": "fp32"}
signature = {
    name: "constexpr" if name in shape else scalars.get(name, "*i64" if name in i64_pointers else "*fp32")
    for name in _run_steps.arg_names
}
options = {key: LAUNCH[key] for key in ("num_warps", "num_stages", "enable_fp_fusion")}
source = ASTSource(_run_steps, signature, constexprs=shape)
kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
cubin = os.path.join(sys.argv[2], "kernel.cubin")
open(cubin, "wb").write(kernel.asm["cubin"])
tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
usage = subprocess.run([tool, "--dump-resource-usage", cubin], capture_output=True, text=True, check=True).stdout
stack = int(usage.split("STACK:")[1].split()[0])
print(json.dumps({"shared": kernel.metadata.shared, "stack": stack}))
"""


@pytest.mark.parametrize(
    "shape",
    [
        dict(R=32, H=32, S=128, HID=128, C=256, M=128, LAYERS=10, TAPS=2, CLASSES=256, MIXTURES=0, NOISE=1,
             IS_MOL=False, FORCING=False, RECORDING=False, BLOCK=16, CHUNK=32),  # the bundled model
        dict(R=128, H=128, S=256, HID=256, C=32, M=128, LAYERS=30, TAPS=3, CLASSES=30, MIXTURES=10, NOISE=2,
             IS_MOL=True, FORCING=True, RECORDING=True, BLOCK=16, CHUNK=32),  # ljspeech-sized, kernel size 3
    ],
    ids=["default", "ljspeech-sized"],
)
def test_compiles_for_an_h100_within_shared_memory(shape, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    command = [sys.executable, "-c", COMPILE, json.dumps(shape), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    usage = json.loads(done.stdout.splitlines()[-1])
    assert usage["shared"] <= 64 * 1024  # a T4's or an L4's is 64 / 99 KB, an H100's 227 KB
    assert usage["stack"] <= 4096  # 4 warps instead of 8 spilled 8 KB per thread here
