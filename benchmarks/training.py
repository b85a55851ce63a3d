"""Training throughput of a recipe's model: samples/s, achieved GFLOP/s and % of the device's matmul peak.

    python benchmarks/training.py --config recipes/flite-speech/config.yaml             # CPU, fp32 and bf16
    python benchmarks/training.py --config recipes/flite-speech/config.yaml --device cuda
    python benchmarks/training.py --config ... --quick                                  # a smoke run

Reads the config's `model.model` (the network) and `data` (`batch_size`, `segment_samples`;
`--batch-size` / `--segment-samples` override them) and times full training steps on
synthetic batches (random audio, mel frames and speakers of the right shapes; no data
loading): forward, loss, backward, gradient clipping at norm 1 and an AdamW step, under
`torch.autocast(bfloat16)` for "bf16-mixed", as `WaveNetModule` trains. Steps after the
warm-up ones are timed until `--seconds` have passed.

Prints JSON lines: first the device's peak, measured here with a large `torch.mm` in
float32 (TF32 on CUDA when cuDNN may use TF32, as by default: the network's convolutions
then run in TF32) and in bfloat16, then one line per precision with its % of peak. The
reference peak for bf16-mixed is the faster of the two: a device without fast bfloat16
matmuls (many CPUs) is still bounded by float32. On such a CPU bf16-mixed training is
skipped (a "skipped" line says so) unless asked for with `--precision bf16-mixed`.
Training cost convention: 3 x `WaveNetConfig.flops_per_sample` per trained sample (the
forward pass's multiply-adds x 2, backward twice that); it leaves out the mel upsampler,
embeddings, element-wise work and the optimizer, so it slightly understates the work done.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import yaml

from wavekit import WaveNet, WaveNetConfig


def peak_gflops(device: torch.device, dtype: torch.dtype, n: int, seconds: float, tf32: bool = False) -> float:
    """GFLOP/s of repeated n x n @ n x n products in `dtype` (TF32 math on CUDA if `tf32`)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.mm(a, b)  # warm up
        _sync(device)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds or count < 1:
            torch.mm(a, b)
            count += 1
            if count % 8 == 0 or device.type == "cpu":
                _sync(device)
        _sync(device)
        elapsed = time.perf_counter() - started
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * n**3 * count / elapsed / 1e9


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo where there is one."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(config: WaveNetConfig, batch: int, segment: int, device: torch.device) -> dict:
    """Random training inputs of the shapes wavekit.data yields."""
    audio = torch.rand(batch, segment, device=device) * 2 - 1
    frames = segment // config.hop_length
    mel = torch.randn(batch, config.mel_channels, frames, device=device) if config.mel_channels else None
    speaker = torch.randint(config.num_speakers, (batch,), device=device) if config.num_speakers else None
    return {"audio": audio, "mel": mel, "speaker": speaker}


def train_rate(
    config: WaveNetConfig, batch: int, segment: int, device: torch.device, bf16: bool, warmup: int, seconds: float
) -> tuple[float, int]:
    """(trained samples/s in steady state, timed steps) of full training steps on one synthetic batch."""
    torch.manual_seed(0)
    net = WaveNet(config).to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    inputs = synthetic_batch(config, batch, segment, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = -net.log_prob(inputs["audio"], inputs["mel"], inputs["speaker"]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    _sync(device)
    steps, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or steps < 2:
        step()
        _sync(device)
        steps += 1
    return batch * segment * steps / elapsed, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a recipe config (wavekit train format)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", nargs="+", choices=["32", "bf16-mixed"], help="default: both")
    parser.add_argument("--batch-size", type=int, help="instead of the config's data.batch_size")
    parser.add_argument("--segment-samples", type=int, help="instead of the config's data.segment_samples")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per precision")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 warm-up step, ~2 timed seconds")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with open(args.config, encoding="utf-8") as f:
        recipe = yaml.safe_load(f)
    config = WaveNetConfig.from_dict((recipe.get("model") or {}).get("model") or {})
    data = recipe.get("data") or {}
    batch = args.batch_size or data.get("batch_size", 8)
    segment = args.segment_samples or data.get("segment_samples", 8000)
    warmup, seconds = (1, 2.0) if args.quick else (3, args.seconds)
    n = 512 if args.quick else (8192 if device.type == "cuda" else 2048)

    tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    fp32_kind = "tf32" if tf32 else "fp32"
    fp32_peak = peak_gflops(device, torch.float32, n, seconds / 4, tf32=tf32)
    bf16_peak = peak_gflops(device, torch.bfloat16, n, seconds / 4)
    print(json.dumps({
        "kind": "peak", "device": args.device, "device_name": device_name(device), "threads": torch.get_num_threads(),
        f"{fp32_kind}_gflops": round(fp32_peak, 1), "bf16_gflops": round(bf16_peak, 1), "matrix": n,
        "torch": torch.__version__,
    }), flush=True)  # fmt: skip
    peaks = {"32": (fp32_peak, fp32_kind), "bf16-mixed": max((bf16_peak, "bf16"), (fp32_peak, fp32_kind))}

    flops = 3 * config.flops_per_sample
    for precision in args.precision or ["32", "bf16-mixed"]:
        if precision == "bf16-mixed" and not args.precision and device.type == "cpu" and bf16_peak < fp32_peak / 2:
            print(json.dumps({"kind": "skipped", "precision": precision, "why": "no fast bfloat16 matmul"}))
            continue
        rate, steps = train_rate(config, batch, segment, device, precision == "bf16-mixed", warmup, seconds)
        gflops = rate * flops / 1e9
        peak, peak_kind = peaks[precision]
        print(json.dumps({
            "kind": "train", "config": args.config, "device": args.device, "precision": precision,
            "batch_size": batch, "segment_samples": segment, "timed_steps": steps,
            "samples_per_s": round(rate, 1), "step_ms": round(batch * segment / rate * 1e3, 1),
            "train_flops_per_sample": flops, "gflops": round(gflops, 2),
            "pct_of_peak": round(100 * gflops / peak, 1), "peak": peak_kind,
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
