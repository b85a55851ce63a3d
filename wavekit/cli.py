"""The `wavekit` command line.

    wavekit toy --out toy.wav      # train a tiny WaveNet on an embedded signal, then synthesize

Bad input prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from wavekit import audio, toy
from wavekit.generation import generate
from wavekit.model import WaveNet


def _toy(args: argparse.Namespace) -> None:
    """Train the toy model on the embedded periodic signal and synthesize with the queued sampler."""
    out = Path(args.out)
    audio.check_writable(out)
    config = toy.toy_config()
    num_samples = int(args.seconds * config.sample_rate)
    if num_samples < 1:
        raise ValueError(f"--seconds: {args.seconds:g} s is less than one sample at {config.sample_rate} Hz")
    torch.manual_seed(args.seed)
    model = WaveNet(config)
    signal = toy.periodic_signal(config.sample_rate * 2, config.sample_rate, seed=args.seed)
    before = toy.bits_per_sample(model, signal)
    started = time.perf_counter()
    toy.train(model, signal, args.steps, seed=args.seed, log_every=max(1, args.steps // 10))
    trained = time.perf_counter() - started
    after = toy.bits_per_sample(model, signal)
    print(f"trained {args.steps} steps in {trained:.1f} s: {before:.3f} -> {after:.3f} bits/sample on the signal")
    started = time.perf_counter()
    wave = generate(model, num_samples, seed=args.seed, progress=True)[0]
    elapsed = time.perf_counter() - started
    audio.save(out, wave, config.sample_rate)
    model.save(out.with_suffix(".safetensors"))
    rate = num_samples / elapsed
    print(
        f"wrote {out} ({args.seconds:g} s) in {elapsed:.2f} s: {rate:,.0f} samples/s, "
        f"{rate / config.sample_rate:.1f}x real time; model: {out.with_suffix('.safetensors')}"
    )


def _positive(kind: type) -> Callable[[str], int | float]:
    """An argparse type: a finite number of `kind` greater than zero."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wavekit", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("toy", help="train a tiny model on an embedded signal and synthesize a WAV")
    p.add_argument("--out", default="toy.wav", help="output WAV path (the model goes beside it)")
    p.add_argument("--steps", type=_positive(int), default=300, help="training steps")
    p.add_argument("--seconds", type=_positive(float), default=2.0, help="seconds of audio to synthesize")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_toy)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `wavekit` console script."""
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as err:
        print(f"wavekit: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
