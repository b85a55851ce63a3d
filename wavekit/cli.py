"""The `wavekit` command line.

    wavekit synth --mel-from speech.wav --speaker slt --out out.wav   # vocode with the bundled model
    wavekit prepare flite-speech                                     # build a corpus + manifest
    wavekit train --config recipes/flite-speech/config.yaml          # Lightning training
    wavekit evaluate --checkpoint runs/flite-speech/checkpoints/last.ckpt --manifest data/flite-speech/manifest.jsonl
    wavekit export runs/flite-speech/checkpoints/last.ckpt voice.safetensors
    wavekit demo --checkpoint voice.safetensors                      # Gradio demo on 127.0.0.1
    wavekit toy --out toy.wav      # train a tiny WaveNet on an embedded signal, then synthesize

Bad input prints one line on stderr and exits with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import logging
import math
import socket
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import NoReturn

import torch

from wavekit import audio, hub, toy
from wavekit.checks import usable_device
from wavekit.generation import stream
from wavekit.model import WaveNet
from wavekit.prepare import RECIPES


def _generate_timed(model: WaveNet, num_samples: int | None, **kwargs) -> tuple[torch.Tensor, float]:
    """(audio [B, T], seconds) of `generate` with a progress bar, timed once the backend is
    built: on a first run the CPU kernel compiles then, which is not generation."""
    chunks = stream(model, num_samples, progress=True, **kwargs)
    started = time.perf_counter()
    waves = torch.cat(list(chunks), dim=1)
    return waves, time.perf_counter() - started


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
    waves, elapsed = _generate_timed(model, num_samples, seed=args.seed)
    audio.save(out, waves[0], config.sample_rate)
    model.save(out.with_suffix(".safetensors"))
    rate = num_samples / elapsed
    print(
        f"wrote {out} ({args.seconds:g} s) in {elapsed:.2f} s: {rate:,.0f} samples/s, "
        f"{rate / config.sample_rate:.1f}x real time; model: {out.with_suffix('.safetensors')}"
    )


def _speaker_id(model: WaveNet, speaker: str | None) -> int | None:
    """`--speaker` (a name from the model or an index) -> id; None for unconditioned models."""
    cfg = model.config
    if not cfg.num_speakers:
        if speaker is not None:
            raise ValueError(f"--speaker: this model has no speakers (got {speaker!r})")
        return None
    if speaker is None:
        return 0
    if speaker in cfg.speaker_names:
        return cfg.speaker_names.index(speaker)
    if speaker.isdigit() and int(speaker) < cfg.num_speakers:
        return int(speaker)
    names = ", ".join(cfg.speaker_names) or f"indices 0..{cfg.num_speakers - 1}"
    raise ValueError(f"--speaker: unknown speaker {speaker!r}; this model has {names}")


def _speaker_label(model: WaveNet, speaker: int | None) -> str:
    names = model.config.speaker_names
    return "" if speaker is None else f", speaker {names[speaker] if names else speaker}"


def _mel_from(model: WaveNet, path: str | None, seconds: float | None) -> torch.Tensor | None:
    """The log-mel [M, F] of `--mel-from`, cut to `--seconds`; checks the model takes (or needs) one."""
    cfg = model.config
    if not cfg.mel_channels:
        if path is not None:
            raise ValueError("--mel-from: this model is unconditional; it takes no mel (leave --mel-from out)")
        return None
    if path is None:
        raise ValueError("--mel-from: this model is mel-conditioned (a vocoder): give a WAV whose mel it should follow")
    mel = cfg.load_audio(path)[1]
    if seconds is not None:
        mel = mel[:, : max(1, round(seconds * cfg.sample_rate / cfg.hop_length))]
    return mel


def _outputs(out: str, batch: int) -> list[Path]:
    """`--out` (.wav added if it has no suffix) for one stream, else OUT_0.wav .. OUT_{N-1}.wav beside
    it; each checked writable."""
    path = Path(out)
    path = path if path.suffix else path.with_name(f"{path.name}.wav")
    paths = [path] if batch == 1 else [path.with_name(f"{path.stem}_{b}{path.suffix}") for b in range(batch)]
    for p in paths:
        audio.check_writable(p)
    return paths


def _device(name: str) -> torch.device:
    """The torch device `name` ("auto": cuda if present), checked usable here; ValueError naming --device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device: {name} requested but no CUDA device is available")
    return usable_device("--device", name)


def _synth(args: argparse.Namespace) -> None:
    """Generate audio from a model: unconditional, speaker-conditioned and/or vocoding a recording's mel."""
    outputs = _outputs(args.out, args.batch)
    device = _device(args.device)
    model = hub.load(args.checkpoint, device=device)
    cfg = model.config
    speaker = _speaker_id(model, args.speaker)
    mel = _mel_from(model, args.mel_from, args.seconds)
    num_samples = None if mel is not None else round((args.seconds or 2.0) * cfg.sample_rate)
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"--seconds: {args.seconds:g} s is less than one sample at {cfg.sample_rate} Hz")
    waves, elapsed = _generate_timed(
        model, num_samples, mel=mel, speaker=speaker, batch_size=args.batch, temperature=args.temperature, seed=args.seed
    )
    for path, wave in zip(outputs, waves.cpu()):
        audio.save(path, wave, cfg.sample_rate)
    total = waves.numel()
    rate = total / elapsed
    names = str(outputs[0]) if len(outputs) == 1 else f"{outputs[0]} .. {outputs[-1].name}"
    print(
        f"wrote {names} ({waves.shape[1] / cfg.sample_rate:.2f} s each{_speaker_label(model, speaker)}) "
        f"in {elapsed:.2f} s on {device}: {rate:,.0f} samples/s, {rate / cfg.sample_rate:.1f}x real time"
    )


def _prepare(args: argparse.Namespace) -> None:
    from wavekit.prepare import prepare

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    manifest = prepare(args.recipe, args.data_dir, args.out)
    print(f"manifest: {manifest}")


def _evaluate(args: argparse.Namespace) -> None:
    from wavekit.train import evaluate

    model = hub.load(args.checkpoint, device=_device(args.device))
    result = evaluate(
        model, args.manifest, args.split, segment_samples=args.segment_samples, batch_size=args.batch_size, progress=True
    )
    print(
        f"{args.split}: {result['bits_per_sample']:.4f} bits/sample over {result['samples']:,} samples "
        f"({result['utterances']} utterances); mu-law histogram entropy {result['mulaw_entropy']:.4f} bits"
    )


def _export(args: argparse.Namespace) -> None:
    if Path(args.out).suffix != ".safetensors":
        raise ValueError(f"OUT: {args.out} should end in .safetensors (the file is safetensors with a JSON config)")
    audio.check_writable(args.out)
    model = hub.export(args.checkpoint, args.out)
    cfg = model.config
    speakers = f", speakers {', '.join(cfg.speaker_names) or cfg.num_speakers}" if cfg.num_speakers else ""
    mel = f", {cfg.mel_channels}-band mel" if cfg.mel_channels else ", unconditional"
    print(f"wrote {args.out}: {cfg.layers} layers, {cfg.head} head, {cfg.sample_rate} Hz{mel}{speakers}")


def _demo(args: argparse.Namespace) -> None:
    from wavekit.demo import main as launch

    try:
        socket.getaddrinfo(args.host, args.port)
    except (socket.gaierror, UnicodeError) as err:
        raise ValueError(f"--host: {args.host} is not an address or name this machine resolves ({err})") from None
    launch(args.checkpoint, host=args.host, port=args.port, share=args.share)


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


def _port(text: str) -> int:
    """An argparse type: a TCP port number."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {text}")
    return int(text)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless there is none to show (None, or off for a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is a --help away), as for every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wavekit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('wavekit')}")
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = {"formatter_class": _HelpFormatter}

    p = commands.add_parser("synth", help="generate audio with a trained model", **defaults)
    p.add_argument("--checkpoint", default="default", help="bundled model name, .ckpt or exported model file")
    p.add_argument("--out", default="out.wav", help="output WAV (with --batch N: OUT_0.wav .. OUT_{N-1}.wav)")
    p.add_argument("--seconds", type=_positive(float), help="length (default 2 s; with --mel-from: cut the mel)")
    p.add_argument("--speaker", help="speaker name or index (default: the model's first speaker)")
    p.add_argument("--mel-from", metavar="WAV", help="condition on this recording's mel (vocoding)")
    p.add_argument("--temperature", type=_positive(float), default=1.0, help="sampling temperature (< 1: sharper)")
    p.add_argument("--seed", type=int, default=0, help="stream b uses seed + b")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1, ...")
    p.add_argument("--batch", type=_positive(int), default=1, help="independent streams, one file each")
    p.set_defaults(run=_synth)

    p = commands.add_parser("prepare", help="download / build a recipe's corpus and its manifest", **defaults)
    p.add_argument("recipe", choices=RECIPES)
    p.add_argument("--data-dir", help="where the raw corpus is or goes (default: OUT/source)")
    p.add_argument("--out", help="where WAVs and manifest.jsonl go (default: data/RECIPE)")
    p.set_defaults(run=_prepare)

    commands.add_parser(  # parsed by the Lightning CLI: see `wavekit train --help`
        "train", help="train with Lightning: --config recipes/NAME/config.yaml [overrides] [--resume]", add_help=False
    )

    p = commands.add_parser("evaluate", help="NLL in bits per sample of a checkpoint over a manifest split", **defaults)
    p.add_argument("--checkpoint", required=True, help="bundled model name, .ckpt or exported model file")
    p.add_argument("--manifest", required=True, help="manifest.jsonl of the corpus (see `wavekit prepare`)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"), help="which utterances to score")
    p.add_argument(
        "--segment-samples", type=_positive(int), metavar="N",
        help="score N-sample pieces tiling each utterance (memory follows N; a mel model's N a multiple of its hop) "
        "instead of whole utterances",
    )  # fmt: skip
    p.add_argument("--batch-size", type=_positive(int), default=8, help="full N-sample pieces scored together")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, ...")
    p.set_defaults(run=_evaluate)

    p = commands.add_parser("export", help="write a checkpoint's inference form (EMA weights + config)", **defaults)
    p.add_argument("checkpoint", help=".ckpt training checkpoint (or any model source)")
    p.add_argument("out", help="output .safetensors file")
    p.set_defaults(run=_export)

    p = commands.add_parser("demo", help="the Gradio demo (binds 127.0.0.1 unless --host says otherwise)", **defaults)
    p.add_argument("--checkpoint", default="default", help="bundled model name, .ckpt or exported model file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    p.add_argument("--port", type=_port, help="port (default: Gradio's, 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.set_defaults(run=_demo)

    p = commands.add_parser("toy", help="train a tiny model on an embedded signal and synthesize a WAV", **defaults)
    p.add_argument("--out", default="toy.wav", help="output WAV path (the model goes beside it)")
    p.add_argument("--steps", type=_positive(int), default=300, help="training steps")
    p.add_argument("--seconds", type=_positive(float), default=2.0, help="seconds of audio to synthesize")
    p.add_argument("--seed", type=int, default=0, help="training and sampling seed")
    p.set_defaults(run=_toy)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `wavekit` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["train"]:  # the Lightning CLI parses the rest
            from wavekit.train import train_cli

            train_cli(argv[1:])
        else:
            args = _parser().parse_args(argv)
            args.run(args)
    except (ValueError, OSError) as err:
        print(f"wavekit: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("wavekit: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
