"""Generation speed: naive vs queued (eager torch) vs fused (numba on the CPU, Triton on CUDA).

    python benchmarks/generation.py            # full table, about 4 minutes on 2 cores
    python benchmarks/generation.py --quick    # a smoke run
    python benchmarks/generation.py --device cuda   # fused-triton, queued-torch and naive
    python benchmarks/generation.py --roofline # the machine's limits that bound the figures
    python benchmarks/generation.py --vocoder  # the bundled mel vocoder, upsampling included

Prints one JSON line per case: samples_per_s (all streams together), real_time_factor at
16 kHz (how many real-time streams that is) and useful GFLOP/s (the incremental
algorithm's FLOPs per sample x samples/s; the naive path does receptive-field times more).
The naive figure is its steady state: one forward pass over a full receptive field per sample.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import torch

from wavekit import WaveNet, WaveNetConfig
from wavekit.generation import generate, naive_generate

MODELS = {
    "20L-R64-S256": WaveNetConfig(layers=20, stacks=2, residual_channels=64, gate_channels=128, skip_channels=256),
    "30L-R128-S256": WaveNetConfig(layers=30, stacks=3, residual_channels=128, gate_channels=256, skip_channels=256),
}
SAMPLE_RATE = 16000
LABELS = {"numba": "fused-numba", "triton": "fused-triton", "torch": "queued-torch", "naive": "naive"}


def naive_steady_state(model: WaveNet, batch: int) -> Callable[[int], None]:
    """n steps of the naive sampler past its start-up: a forward pass over a full receptive field each.

    `naive_generate` from silence has shorter windows for its first receptive field of
    samples, which would flatter it; this times the per-sample work once windows are full.
    """
    window = torch.zeros(batch, model.receptive_field, device=next(model.parameters()).device)

    def run(n: int) -> None:
        with torch.no_grad():
            for _ in range(n):
                model.distribution.sample(model(window)[:, :, -1])

    return run


def measure(model: WaveNet, method: str, batch: int, seconds: float) -> tuple[int, float]:
    """(samples per stream, wall seconds) of one run sized to take about `seconds`."""
    if method == "naive":
        naive_generate(model, 8, batch_size=batch, seed=0)  # the sampler itself runs
        run = naive_steady_state(model, batch)
    else:
        # .cpu() waits for the device to finish
        run = lambda n: generate(model, n, batch_size=batch, seed=0, backend=method).cpu()  # noqa: E731
    run(8)  # compile / warm up
    n = 8
    while True:
        started = time.perf_counter()
        run(n)
        elapsed = time.perf_counter() - started
        if elapsed > seconds / 4 or n >= 1 << 20:
            break
        n *= 4
    n = max(8, int(n * seconds / max(elapsed, 1e-6)))
    started = time.perf_counter()
    run(n)
    return n, time.perf_counter() - started


def matmul_gflops(m: int, k: int, n: int, device: str, seconds: float = 0.5) -> float:
    """Achieved GFLOP/s of float32 [m, k] @ [k, n] on `device`."""
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    for _ in range(3):
        a @ b
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        calls += 1
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * m * k * n * calls / (time.perf_counter() - started) / 1e9


def roofline(device: str) -> None:
    """Print the limits behind the figures: GEMM peak, the step's GEMM shapes, weight bytes."""
    config = MODELS["20L-R64-S256"]
    r, g, s = config.residual_channels, config.gate_channels, config.skip_channels
    shapes = {"peak 2048^3": (2048, 2048, 2048), "conv tap": (256, r, g), "res+skip": (256, g // 2, r + s)}
    shapes["out"] = (256, s, s)
    for name, shape in shapes.items():
        print(json.dumps({"roofline": "sgemm", "shape": name, "mkn": shape, "gflops": round(matmul_gflops(*shape, device), 1)}))
    weights = config.flops_per_sample // 2 * 4
    print(json.dumps({"roofline": "weights", "model": "20L-R64-S256", "fp32_bytes_per_sample": weights}))
    if device == "cpu":
        block = torch.ones(weights // 4)
        threads = torch.get_num_threads()
        for count in sorted({1, threads}):
            torch.set_num_threads(count)
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < 0.5:
                block.sum()
                calls += 1
            rate = calls * weights / (time.perf_counter() - started) / 1e9
            print(json.dumps({"roofline": "read bandwidth of the weights' size", "threads": count, "gb_per_s": round(rate, 1)}))
        torch.set_num_threads(threads)
        for rows in (8, 16, 128):  # the kernel's own product, one core, per group of `rows` streams
            depth, n = g // 2, r + s
            print(json.dumps({"roofline": "numba micro-kernel, 1 core", "mkn": [rows, depth, n],
                              "gflops": round(micro_kernel_gflops(rows, depth, n), 1)}))  # fmt: skip


def vocoder(device: str, seconds: float = 10.0) -> None:
    """The bundled model vocoding `seconds` of random mel frames per stream, from frames to audio."""
    from wavekit import hub

    model = hub.load("default", device=device)
    cfg = model.config
    frames = int(seconds * cfg.sample_rate) // cfg.hop_length
    for batch in (1, 16):
        mel = torch.randn(batch, cfg.mel_channels, frames, generator=torch.Generator().manual_seed(0)).to(device)
        generate(model, mel=mel[:, :, :4], speaker=[0] * batch, seed=0)  # compile / warm up
        started = time.perf_counter()
        audio = generate(model, mel=mel, speaker=[0] * batch, seed=0)
        elapsed = time.perf_counter() - started
        rate = audio.numel() / elapsed
        print(json.dumps({
            "model": "default (bundled vocoder: mel + speaker)", "batch": batch, "device": device,
            "seconds_of_audio_each": round(audio.shape[1] / cfg.sample_rate, 2), "wall_s": round(elapsed, 3),
            "samples_per_s": round(rate, 1), "real_time_factor": round(rate / cfg.sample_rate, 2),
            "gflops": round(rate * cfg.flops_per_sample / 1e9, 2),
        }), flush=True)  # fmt: skip


def micro_kernel_gflops(rows: int, depth: int, n: int, seconds: float = 0.5) -> float:
    """Achieved GFLOP/s of `gemm_panels` (the numba kernel's product) on one thread."""
    import numba
    import numpy as np

    from wavekit.generation.gemm import gemm_panels, pack_panels, padded

    @numba.njit
    def repeat(a, panels, c, calls):
        for _ in range(calls):
            gemm_panels(a, rows, depth, panels, c)

    a = np.random.rand(rows, depth).astype(np.float32)
    panels = pack_panels(np.random.rand(n, depth).astype(np.float32))
    c = np.zeros((rows, padded(n)), np.float32)
    repeat(a, panels, c, 1)
    calls = max(1, int(2e9 * seconds / 100 / (2 * rows * depth * n)))
    started = time.perf_counter()
    repeat(a, panels, c, calls)
    return 2 * rows * depth * n * calls / (time.perf_counter() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="short runs, fewer cases")
    parser.add_argument("--roofline", action="store_true", help="print the machine's limits and stop")
    parser.add_argument("--vocoder", action="store_true", help="the bundled mel vocoder, upsampling included, and stop")
    args = parser.parse_args()
    if args.roofline:
        roofline(args.device)
        return
    if args.vocoder:
        vocoder(args.device)
        return
    seconds = 0.5 if args.quick else 3.0
    methods = ["numba", "torch", "naive"] if args.device == "cpu" else ["triton", "torch", "naive"]
    batches = [1, 64] if args.quick else [1, 64, 256]
    torch.manual_seed(0)
    for name, config in MODELS.items():
        model = WaveNet(config).eval().to(args.device)
        for method in methods:
            for batch in batches:
                if method == "naive" and batch > 1:
                    continue
                samples, elapsed = measure(model, method, batch, seconds)
                rate = samples * batch / elapsed
                record = {
                    "model": name,
                    "method": LABELS[method],
                    "batch": batch,
                    "device": args.device,
                    "samples_per_stream": samples,
                    "seconds": round(elapsed, 3),
                    "samples_per_s": round(rate, 1),
                    "real_time_factor": round(rate / SAMPLE_RATE, 3),
                    "gflops": round(rate * config.flops_per_sample / 1e9, 2),
                    "threads": torch.get_num_threads(),
                    "cpu": platform.processor() or platform.machine(),
                }
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
