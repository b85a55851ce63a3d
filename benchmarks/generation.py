"""Generation speed: naive vs queued (eager torch) vs fused (numba) across models and batch sizes.

    python benchmarks/generation.py            # full table, about 4 minutes on 2 cores
    python benchmarks/generation.py --quick    # a smoke run
    python benchmarks/generation.py --device cuda

Prints one JSON line per case: samples_per_s (all streams together), real_time_factor at
16 kHz (how many real-time streams that is) and useful GFLOP/s (the incremental
algorithm's FLOPs per sample x samples/s; the naive path does receptive-field times more).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from wavekit import WaveNet, WaveNetConfig
from wavekit.generation import generate, naive_generate

MODELS = {
    "20L-R64-S256": WaveNetConfig(layers=20, stacks=2, residual_channels=64, gate_channels=128, skip_channels=256),
    "30L-R128-S256": WaveNetConfig(layers=30, stacks=3, residual_channels=128, gate_channels=256, skip_channels=256),
}
SAMPLE_RATE = 16000


def measure(model: WaveNet, method: str, batch: int, seconds: float) -> tuple[int, float]:
    """(samples per stream, wall seconds) of one run sized to take about `seconds`."""
    if method == "naive":
        run = lambda n: naive_generate(model, n, batch_size=batch, seed=0)  # noqa: E731
    else:
        run = lambda n: generate(model, n, batch_size=batch, seed=0, backend=method)  # noqa: E731
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="short runs, fewer cases")
    args = parser.parse_args()
    seconds = 0.5 if args.quick else 3.0
    methods = ["numba", "torch", "naive"] if args.device == "cpu" else ["torch", "naive"]
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
                    "method": "fused-numba" if method == "numba" else "queued-torch" if method == "torch" else "naive",
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
