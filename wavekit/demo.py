"""The wavekit web demo: a Gradio 6 app that streams a WaveNet's audio while it is generated.

`build_demo(model)` returns the Blocks app; `main(checkpoint)` loads a model with
`wavekit.hub.load` and serves it on 127.0.0.1 (no share link). Every user's request goes
to one shared `wavekit.serving.BatchingEngine`, so concurrent users join one batched
generation. The handlers are methods of `Demo`, plain functions testable without a server.

    wavekit demo --checkpoint model.safetensors --port 7860     # or: python demo/app.py ...
"""

from __future__ import annotations

import io
import logging
import math
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import numpy as np
import soundfile as sf
import torch

from wavekit import audio as wavio
from wavekit.checks import positive_int
from wavekit.model import WaveNet
from wavekit.serving import BatchingEngine
from wavekit.streamed_audio import StreamedAudio

__all__ = ["Demo", "build_demo", "main", "spectrogram_image"]

log = logging.getLogger(__name__)

EXAMPLE_TEXT = "The quick brown fox jumps over the lazy dog."
MAX_SEED = 2**62
CACHE_SECONDS = 3600  # Gradio deletes its copies of results this old, checking as often
# Anchor colours of the spectrogram colour map (dark blue -> purple -> orange -> pale yellow).
_COLORS = np.array([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]], np.float32)


def _wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV of float samples in [-1, 1], quantised as `wavekit.audio.save` does (no
    peak normalisation, unlike Gradio's numpy path, so chunks keep one loudness)."""
    buffer = io.BytesIO()
    sf.write(buffer, wavio.to_pcm16(samples), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _panel(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """One log-mel spectrogram as RGB pixels [160, frames, 3]: 10 ms per column, low frequencies at the bottom."""
    hop = max(1, sample_rate // 100)
    n_fft = 1 << max(4 * hop - 1, 1).bit_length()
    padded = np.pad(samples, (0, max(0, hop - len(samples))))
    mel = wavio.log_mel(torch.from_numpy(padded.astype(np.float32)), sample_rate, 80, hop, n_fft).numpy()
    top = mel.max()
    level = np.clip((mel - (top - 8.0)) / 8.0, 0.0, 1.0)[::-1]  # 8 nats (~70 dB) of range
    position = level * (len(_COLORS) - 1)
    rgb = np.stack([np.interp(position, np.arange(len(_COLORS)), _COLORS[:, c]) for c in range(3)], axis=-1)
    return np.repeat(rgb.astype(np.uint8), 2, axis=0)


def spectrogram_image(result: np.ndarray, sample_rate: int, reference: np.ndarray | None = None) -> np.ndarray:
    """RGB image [H, W, 3] uint8: the result's log-mel spectrogram, the reference's below it (same time scale)."""
    panels = [_panel(result, sample_rate)]
    if reference is not None:
        panels.append(_panel(reference, sample_rate))
    width = max(p.shape[1] for p in panels)
    gap = np.full((6, width, 3), 255, np.uint8)
    rows = []
    for p in panels:
        rows += [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255), gap]
    return np.concatenate(rows[:-1])


def _mtime(path: Path) -> int:
    """When `path` was last written, in ns; -1 if it is gone (removed since it was listed)."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return -1


def _example_recording(path: Path, sample_rate: int) -> None:
    """A short reference recording: speech from flite when it is installed, else a gliding harmonic tone."""
    if shutil.which("flite"):
        spoken = path.with_suffix(".flite.wav")
        command = ["flite", "-voice", "slt", "-t", EXAMPLE_TEXT, "-o", str(spoken)]
        try:
            if subprocess.run(command, capture_output=True, timeout=60).returncode == 0:
                wavio.save(path, wavio.load(spoken, sample_rate), sample_rate)
                return
        except (subprocess.TimeoutExpired, OSError, wavio.AudioError) as err:
            log.warning("flite could not speak the example (%s); using a tone instead", err)
    t = np.arange(int(2.0 * sample_rate)) / sample_rate
    pitch = 140 + 60 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 6)) * np.minimum(1, 10 * t) * np.minimum(1, 10 * (2 - t))
    wavio.save(path, 0.3 * tone / np.abs(tone).max(), sample_rate)


class Demo:
    """The demo's state and handlers: the model, the shared engine and a scratch folder for WAVs.

    `engine` defaults to a new `BatchingEngine(model, max_batch=max_queue)`; pass one to share it
    (and close it yourself). `max_seconds` bounds every request's length.
    """

    def __init__(
        self, model: WaveNet, *, max_queue: int = 16, max_seconds: float = 10.0, engine: BatchingEngine | None = None
    ):
        positive_int("max_queue", max_queue)
        if not (isinstance(max_seconds, (int, float)) and math.isfinite(max_seconds) and max_seconds > 0):
            raise ValueError(f"max_seconds: must be a positive number of seconds, got {max_seconds!r}")
        self.config = model.config
        self.max_queue = max_queue
        self.max_seconds = float(max_seconds)
        self.sample_rate = self.config.sample_rate
        count = self.config.num_speakers
        self.speakers = list(self.config.speaker_names) or [f"speaker {i}" for i in range(count)]
        self._scratch = tempfile.TemporaryDirectory(prefix="wavekit-demo-")
        self.folder = Path(self._scratch.name)
        self._prune_lock = threading.Lock()
        self.example = None
        if self.config.mel_channels:
            self.example = self.folder / "example.wav"
            _example_recording(self.example, self.sample_rate)
        # Last, so that a failure above leaves no engine thread behind.
        self._owns_engine = engine is None
        self.engine = engine if engine is not None else BatchingEngine(model, max_batch=max_queue)

    # ------------------------------------------------------------------ handlers

    def generate(
        self,
        speaker: str | None,
        reference: str | None,
        seconds: float,
        temperature: float,
        seed: float | int,
    ) -> Iterator[tuple]:
        """Generate one clip. Yields (audio, WAV path, spectrogram, status) updates.

        About every second of audio yields its chunk as WAV bytes for the streamed player
        (the other outputs skipped); the last update carries the whole clip as a WAV file
        and the spectrogram beside the reference's. Bad input raises gr.Error naming the field.
        """
        kwargs, ref = self._request(speaker, reference, seconds, temperature, seed)
        try:
            request = self.engine.submit(**kwargs)
        except ValueError as err:
            raise gr.Error(str(err)) from err
        started = time.perf_counter()
        total = request.num_samples / self.sample_rate
        chunks: list[np.ndarray] = []
        try:
            for chunk in request:
                chunks.append(chunk)
                done = sum(len(c) for c in chunks) / self.sample_rate
                status = f"Generating: {done:.1f} of {total:.1f} s"
                yield _wav_bytes(chunk, self.sample_rate), gr.skip(), gr.skip(), status
        except RuntimeError as err:
            raise gr.Error(f"Generation failed: {err}") from err
        clip = np.concatenate(chunks)
        elapsed = time.perf_counter() - started
        path = self.folder / f"wavekit-seed{kwargs['seed']}-{uuid.uuid4().hex[:8]}.wav"
        wavio.save(path, clip, self.sample_rate)
        self._prune_wavs()
        status = f"Generated {total:.2f} s in {elapsed:.2f} s ({total / elapsed:.2f}x real time)."
        image = spectrogram_image(clip, self.sample_rate, ref)
        yield gr.skip(), str(path), image, status  # the player already holds every chunk

    def _prune_wavs(self) -> None:
        """Keep the scratch folder bounded: only the newest 2 x max_queue generated WAVs.

        Gradio copies each output file into its own cache when the handler yields it
        (and `delete_cache` ages that copy out), so older files here are no longer read.
        """
        with self._prune_lock:
            wavs = sorted(self.folder.glob("wavekit-seed*.wav"), key=_mtime)
            for old in wavs[: -2 * self.max_queue]:
                old.unlink(missing_ok=True)

    def _request(self, speaker, reference, seconds, temperature, seed) -> tuple[dict, np.ndarray | None]:
        """Check the form's values; returns (engine.submit keyword arguments, cut reference or None)."""
        kwargs: dict = {}
        if self.speakers:
            if speaker not in self.speakers:
                raise gr.Error(f"Speaker: choose one of {', '.join(self.speakers)} (got {speaker!r})")
            kwargs["speaker"] = self.speakers.index(speaker)
        if not isinstance(seconds, (int, float)) or not 0 < seconds <= self.max_seconds:
            raise gr.Error(f"Duration: must be between 0 and {self.max_seconds:g} s, got {seconds!r}")
        if not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
            raise gr.Error(f"Temperature: must be above 0, got {temperature!r}")
        if not isinstance(seed, (int, float)) or not 0 <= seed < MAX_SEED or seed != int(seed):
            raise gr.Error(f"Seed: must be a whole number from 0 to 2^62, got {seed!r}")
        kwargs.update(temperature=float(temperature), seed=int(seed))
        limit = max(1, round(seconds * self.sample_rate))
        if not self.config.mel_channels:
            return {**kwargs, "num_samples": limit}, None
        if not reference:
            raise gr.Error("Reference recording: upload or record one (its mel spectrogram conditions the voice)")
        try:
            ref = wavio.load(reference, self.sample_rate)[:limit]
        except wavio.AudioError as err:
            raise gr.Error(f"Reference recording: {err}") from err
        hop = self.config.hop_length
        if len(ref) < hop:
            raise gr.Error(f"Reference recording: {len(ref)} samples, shorter than one frame ({hop} samples)")
        kwargs["mel"] = self.config.mel(ref)
        return kwargs, ref.numpy()

    # ------------------------------------------------------------------ the page

    def blocks(self) -> gr.Blocks:
        """The Gradio page: form, streamed audio, WAV download, spectrogram, one-click examples."""
        cfg, mel = self.config, bool(self.config.mel_channels)
        summary = f"A {cfg.layers}-layer WaveNet ({cfg.head} output, {cfg.sample_rate} Hz)"
        if mel:
            summary += ", conditioned on the mel spectrogram of a reference recording"
        if self.speakers:
            summary += f", {len(self.speakers)} speakers"
        default_seconds = min(2.0, self.max_seconds)
        with gr.Blocks(title="wavekit demo", delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as page:
            gr.Markdown(
                f"# wavekit\n{summary}. Audio plays while it is generated; "
                "everyone's requests share one batched generation."
            )
            with gr.Row():
                with gr.Column():
                    speaker = gr.Dropdown(
                        self.speakers, value=self.speakers[0] if self.speakers else None, label="Speaker",
                        visible=bool(self.speakers),
                    )  # fmt: skip
                    reference = gr.Audio(
                        str(self.example) if mel else None, sources=["upload", "microphone"], type="filepath",
                        visible=mel, label="Reference recording (its mel spectrogram conditions the output)",
                    )  # fmt: skip
                    seconds = gr.Slider(
                        0.1, self.max_seconds, value=default_seconds, step=0.1,
                        label="Longest duration (s): the reference sets the length" if mel else "Duration (s)",
                    )  # fmt: skip
                    temperature = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="Temperature")
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed")
                    button = gr.Button("Generate", variant="primary")
                with gr.Column():
                    stream = StreamedAudio(label="Generated audio", streaming=True, autoplay=True, interactive=False)
                    wav = gr.File(label="WAV to download", interactive=False)
                    image = gr.Image(
                        label="Log-mel spectrogram" + (": generated (top), reference (bottom)" if mel else ""),
                        format="png", interactive=False,
                    )  # fmt: skip
                    status = gr.Markdown(label="Status")
            inputs = [speaker, reference, seconds, temperature, seed]
            outputs = [stream, wav, image, status]
            button.click(self.generate, inputs, outputs, api_name="generate")
            first = self.speakers[0] if self.speakers else None
            last = self.speakers[-1] if self.speakers else None
            example = str(self.example) if self.example else None
            examples = gr.Examples(
                [[first, example, default_seconds, 1.0, 0], [last, example, self.max_seconds, 0.8, 1]],
                inputs, api_name="load_example",
                visible_columns=[i for i, used in enumerate([bool(self.speakers), mel, True, True, True]) if used],
            )  # fmt: skip
            # One click on an example fills the form, then generates (Examples' run_on_click, named).
            examples.load_input_event.then(
                self.generate, inputs, outputs, api_name="generate_example", api_visibility="undocumented"
            )
        # Up to max_queue users generate together (one engine batch); as many more wait, then
        # Gradio answers "This application is currently busy. Please try again."
        return page.queue(max_size=self.max_queue, default_concurrency_limit=self.max_queue)

    def close(self) -> None:
        """Stop the engine (unless it was passed in) and remove the scratch folder."""
        if self._owns_engine:
            self.engine.close()
        self._scratch.cleanup()


def build_demo(
    model: WaveNet, *, max_queue: int = 16, max_seconds: float = 10.0, engine: BatchingEngine | None = None
) -> gr.Blocks:
    """The demo's Gradio Blocks for `model`, with its queue bounded by `max_queue` (see `Demo`)."""
    return Demo(model, max_queue=max_queue, max_seconds=max_seconds, engine=engine).blocks()


def main(checkpoint: str = "default", host: str = "127.0.0.1", port: int | None = None, share: bool = False) -> None:
    """Load `checkpoint` (a .ckpt, an exported .safetensors or "default") and serve the demo on
    host:port, with a public gradio.live link only if `share`."""
    from wavekit import hub

    model = hub.load(checkpoint)
    build_demo(model).launch(server_name=host, server_port=port, share=share, max_file_size="20mb")

