"""Tests for the web demo (wavekit/demo.py): the handlers as plain functions (chunks, WAV file,
spectrogram, bad input), the page's events and queue, the app served on 127.0.0.1 under 8
concurrent gradio_client requests and a full queue, and one click in headless Chromium
driven over the DevTools protocol.

Models are tiny (4 layers, 8 residual channels) at 8 kHz, and clips last at most 1.5 s.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import av
import gradio as gr
import numpy as np
import pytest
import soundfile as sf
import torch
from gradio_client import Client, handle_file

import wavekit.demo as app
from wavekit import streamed_audio
from wavekit import audio as wavio
from wavekit.generation import generate
from wavekit.model import WaveNet, WaveNetConfig
from wavekit.serving import BatchingEngine

RATE = 8000
HOP = 16
CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: a lone stream is then not split across cores, whose spin barriers
    crawl when other processes load the machine (tiny models gain nothing from the split)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def make_model(*, mel: bool, speakers: int = 2, names: tuple[str, ...] = ()) -> WaveNet:
    torch.manual_seed(0)
    config = WaveNetConfig(
        layers=4, stacks=1, residual_channels=8, gate_channels=16, skip_channels=16, sample_rate=RATE,
        mel_channels=20 if mel else 0, upsample_scales=(4, 4), n_fft=256, num_speakers=speakers, speaker_names=names,
    )  # fmt: skip
    return WaveNet(config).eval()


@pytest.fixture
def make_demo():
    demos: list[app.Demo] = []

    def make(model: WaveNet, **kwargs) -> app.Demo:
        engine = BatchingEngine(model, max_batch=kwargs.get("max_queue", 16), step_samples=200)
        demos.append(app.Demo(model, engine=engine, **kwargs))
        return demos[-1]

    yield make
    for d in demos:
        d.close()


def read_wav(data: bytes | str) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(data) if isinstance(data, bytes) else data, dtype="float32")
    return samples, rate


# --------------------------------------------------------------------------------------
# 1. Handlers as plain functions.
# --------------------------------------------------------------------------------------


def test_generate_streams_chunks_then_the_wav_and_spectrogram(make_demo):
    model = make_model(mel=False, names=("alto", "bass"))
    demo = make_demo(model, max_seconds=2.0)
    updates = list(demo.generate("bass", None, 1.5, 0.9, 7))
    assert len(updates) == 3  # 1 s + 0.5 s of audio, then the results
    chunks = [read_wav(u[0]) for u in updates[:2]]
    assert [len(c) for c, _ in chunks] == [RATE, RATE // 2] and {r for _, r in chunks} == {RATE}
    assert all(u[1] == gr.skip() and u[2] == gr.skip() for u in updates[:2])
    audio, path, image, status = updates[-1]
    assert audio == gr.skip()  # the player already holds every chunk
    clip, rate = read_wav(path)
    assert rate == RATE and clip.shape == (12000,)
    expected = generate(model, 12000, speaker=1, temperature=0.9, seed=7)[0].numpy()
    assert np.abs(clip - expected).max() <= 1.5 / 32768  # the same draw, stored as 16-bit PCM
    assert np.array_equal(np.concatenate([c for c, _ in chunks]), clip)
    assert image.dtype == np.uint8 and image.shape == (160, 12000 // (RATE // 100), 3)
    assert image.std() > 0
    assert "1.50 s" in status
    assert Path(path).name.startswith("wavekit-seed7-")


def test_scratch_folder_keeps_only_the_newest_wavs(make_demo):
    demo = make_demo(make_model(mel=False), max_queue=2, max_seconds=1.0)
    paths = [list(demo.generate("speaker 0", None, 0.05, 1.0, seed))[-1][1] for seed in range(7)]
    kept = sorted(p.name for p in demo.folder.glob("wavekit-seed*.wav"))
    assert kept == sorted(Path(p).name for p in paths[-4:])  # 2 x max_queue
    assert all(read_wav(p)[0].shape == (round(0.05 * RATE),) for p in paths[-4:])


def test_pruning_skips_wavs_removed_since_they_were_listed(make_demo, monkeypatch):
    """Another request's save or prune may remove a file between the listing and its stat."""
    demo = make_demo(make_model(mel=False), max_queue=1, max_seconds=1.0)
    paths = [Path(list(demo.generate("speaker 0", None, 0.05, 1.0, seed))[-1][1]) for seed in range(3)]
    listing = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern: [self / "wavekit-seed9-gone.wav", *listing(self, pattern)])
    demo._prune_wavs()
    assert sorted(listing(demo.folder, "wavekit-seed*.wav")) == sorted(paths[-2:])


def test_mel_model_follows_the_reference_cut_to_the_duration(make_demo):
    model = make_model(mel=True)
    demo = make_demo(model, max_seconds=1.0)
    reference = wavio.load(demo.example, RATE)
    assert len(reference) > RATE  # the example recording is longer than the cut
    updates = list(demo.generate("speaker 0", str(demo.example), 1.0, 1.0, 3))
    audio, path, image, _ = updates[-1]
    clip, _ = read_wav(path)
    assert np.array_equal(np.concatenate([read_wav(u[0])[0] for u in updates[:-1]]), clip)
    assert clip.shape == (RATE // HOP * HOP,)
    expected = generate(model, mel=model.config.mel(reference[:RATE]), speaker=0, seed=3)[0].numpy()
    assert np.abs(clip - expected).max() <= 1.5 / 32768
    width = RATE // (RATE // 100)
    assert image.shape == (160 + 6 + 160, width, 3)  # generated above the reference


@pytest.mark.parametrize(
    "args, field",
    [
        (("speaker 9", None, 1.0, 1.0, 0), "Speaker"),
        (("speaker 0", None, 5.0, 1.0, 0), "Duration"),
        (("speaker 0", None, 0.0, 1.0, 0), "Duration"),
        (("speaker 0", None, 1.0, 0.0, 0), "Temperature"),
        (("speaker 0", None, 1.0, 1.0, -1), "Seed"),
        (("speaker 0", None, 1.0, 1.0, 1.5), "Seed"),
        (("speaker 0", None, 1.0, 1.0, float("nan")), "Seed"),
        (("speaker 0", None, 1.0, 1.0, None), "Seed"),
    ],
)
def test_bad_form_values_name_the_field(make_demo, args, field):
    demo = make_demo(make_model(mel=False), max_seconds=2.0)
    with pytest.raises(gr.Error, match=field):
        next(demo.generate(*args))
    assert demo.engine.requests == 0


def test_bad_reference_recordings(make_demo, tmp_path):
    demo = make_demo(make_model(mel=True), max_seconds=1.0)
    with pytest.raises(gr.Error, match="Reference recording: upload or record"):
        next(demo.generate("speaker 0", None, 1.0, 1.0, 0))
    garbage = tmp_path / "noise.wav"
    garbage.write_bytes(b"RIFF....WAVEfmt nonsense")
    with pytest.raises(gr.Error, match=r"Reference recording: .*noise\.wav"):
        next(demo.generate("speaker 0", str(garbage), 1.0, 1.0, 0))
    short = tmp_path / "short.wav"
    wavio.save(short, np.zeros(HOP - 1, np.float32), RATE)
    with pytest.raises(gr.Error, match="shorter than one frame"):
        next(demo.generate("speaker 0", str(short), 1.0, 1.0, 0))


def test_example_recording_without_flite_is_a_tone(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    app._example_recording(tmp_path / "tone.wav", RATE)
    tone = wavio.load(tmp_path / "tone.wav", RATE)
    assert len(tone) == 2 * RATE and 0.1 < tone.abs().max() <= 0.31


def test_example_recording_falls_back_to_a_tone_when_flite_fails(tmp_path, monkeypatch):
    def hang(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], 60)

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/flite")
    monkeypatch.setattr(subprocess, "run", hang)
    app._example_recording(tmp_path / "tone.wav", RATE)
    assert len(wavio.load(tmp_path / "tone.wav", RATE)) == 2 * RATE


def test_closing_a_demo_leaves_a_shared_engine_running():
    model = make_model(mel=False, speakers=0)
    with BatchingEngine(model, max_batch=2, step_samples=200) as shared:
        first, second = app.Demo(model, engine=shared), app.Demo(model, engine=shared)
        first.close()
        assert len(shared.submit(num_samples=100, seed=0).result()) == 100
        second.close()
    own = app.Demo(model)
    own.close()
    with pytest.raises(RuntimeError, match="closed"):
        own.engine.submit(num_samples=100)


def test_bad_demo_arguments():
    model = make_model(mel=False)
    with pytest.raises(ValueError, match="max_queue"):
        app.Demo(model, max_queue=0)
    with pytest.raises(ValueError, match="max_seconds"):
        app.Demo(model, max_seconds=float("inf"))


# --------------------------------------------------------------------------------------
# 2. The page.
# --------------------------------------------------------------------------------------


def test_page_events_are_named_and_the_queue_bounded(make_demo):
    demo = make_demo(make_model(mel=False, speakers=0), max_queue=3)
    page = demo.blocks()
    assert isinstance(page, gr.Blocks)
    names = {fn.api_name for fn in page.fns.values()}
    assert names == {"generate", "load_example", "generate_example"}
    assert page._queue.max_size == 3
    components = {type(b).__name__: b for b in page.blocks.values()}
    assert components["Dropdown"].visible is False  # no speakers
    audios = [b for b in page.blocks.values() if isinstance(b, gr.Audio)]
    assert [a.visible for a in audios] == [False, True]  # no reference recording; the output


def test_build_demo_returns_blocks():
    model = make_model(mel=False)
    with BatchingEngine(model) as engine:
        page = app.build_demo(model, max_queue=2, max_seconds=1.0, engine=engine)
        assert isinstance(page, gr.Blocks) and page._queue.max_size == 2


# --------------------------------------------------------------------------------------
# 3. Served on 127.0.0.1.
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_ffmpeg(*args, **kwargs):
    raise AssertionError("Gradio's ffmpeg encoder was used for the streamed audio")


@pytest.fixture(scope="module")
def served():
    """The demo of a mel + speaker model, served on 127.0.0.1: (url, Demo). Gradio's own
    ffmpeg stream encoder fails if used: the player must encode in-process."""
    patch = pytest.MonkeyPatch()
    patch.setattr("gradio.components.audio.AacStreamEncoder", _no_ffmpeg)
    model = make_model(mel=True)
    engine = BatchingEngine(model, max_batch=8, step_samples=200)
    demo = app.Demo(model, max_queue=8, max_seconds=1.0, engine=engine)
    page = demo.blocks()
    _, url, _ = page.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield url, demo
    page.close()
    demo.close()
    patch.undo()


def test_eight_concurrent_clients_get_their_audio(served):
    url, demo = served
    results: dict[int, tuple] = {}
    streamed: dict[int, int] = {}

    def client(i: int) -> None:
        job = Client(url, verbose=False).submit(
            f"speaker {i % 2}", handle_file(str(demo.example)), 0.5 + 0.05 * i, 1.0, i, api_name="/generate"
        )
        results[i] = job.result(timeout=120)
        streamed[i] = len(job.outputs())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    assert sorted(results) == list(range(8))
    for i, (_, path, image, status) in results.items():
        clip, rate = read_wav(path)
        assert rate == RATE and len(clip) == int((0.5 + 0.05 * i) * RATE) // HOP * HOP, i
        assert np.abs(clip).max() > 0 and Path(image).exists() and "Generated" in status
        assert streamed[i] >= 2, i  # a streamed chunk came before the results
    assert demo.engine.requests == 0 and streamed_audio._open_streams == {}  # every stream released


def test_streamed_player_gets_the_clip_as_aac(served):
    """The HLS playlist the page plays: its AAC segments decode to the generated clip."""
    url, demo = served
    job = Client(url, verbose=False, download_files=False).submit(
        "speaker 1", handle_file(str(demo.example)), 1.0, 1.0, 5, api_name="/generate"
    )
    _, wav, _, _ = job.result(timeout=120)
    playlist = job.outputs()[0][0]["url"]
    lines = urllib.request.urlopen(playlist).read().decode().splitlines()
    assert lines[-1] == "#EXT-X-ENDLIST"
    segments = [line for line in lines if line.endswith(".aac")]
    data = b"".join(urllib.request.urlopen(playlist.rsplit("/", 1)[0] + "/" + name).read() for name in segments)
    with av.open(io.BytesIO(data), format="adts") as container:
        frames = list(container.decode(audio=0))
    decoded = np.concatenate([f.to_ndarray().ravel() for f in frames])
    declared = sum(float(line[len("#EXTINF:") :].rstrip(",")) for line in lines if line.startswith("#EXTINF:"))
    assert frames[0].sample_rate == RATE and declared == pytest.approx(len(decoded) / RATE, abs=1e-5)
    clip, _ = read_wav(urllib.request.urlopen(wav["url"]).read())
    error = decoded[1024 : 1024 + len(clip)] - clip  # after the encoder's one-frame delay
    assert len(decoded) >= len(clip) + 1024
    assert 10 * np.log10(np.mean(clip**2) / np.mean(error**2)) > 12, "the stream is not the clip"  # 18 dB; misaligned < 3


def test_full_queue_says_busy():
    """max_queue 1: one request generates, one waits, the others are turned away."""
    model = make_model(mel=False)
    demo = app.Demo(model, max_queue=1, max_seconds=600.0)  # long enough to outlast the submissions
    page = demo.blocks()
    _, url, _ = page.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        jobs = [client.submit("speaker 0", None, 600.0, 1.0, i, api_name="/generate") for i in range(4)]

        def refused() -> list[str]:
            return [str(job.exception()) for job in jobs if job.done() and job.exception() is not None]

        deadline = time.monotonic() + 60
        while len(refused()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(refused()) == 2 and all("Queue is full" in message for message in refused()), refused()
        assert sum(job.done() for job in jobs) == 2  # the other two still generate or wait
    finally:
        demo.close()  # ends the long generations
        page.close()


# --------------------------------------------------------------------------------------
# 4. In a browser.
# --------------------------------------------------------------------------------------


class DevTools:
    """A minimal Chrome DevTools protocol client over aiohttp's websocket."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0

    async def evaluate(self, expression: str):
        self.next_id += 1
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        await self.ws.send_json({"id": self.next_id, "method": "Runtime.evaluate", "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == self.next_id:
                return message["result"]["result"].get("value")

    async def wait_for(self, expression: str, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out waiting for: {expression}")


async def _drive_page(port: int) -> dict:
    import aiohttp  # a dependency of pytorch-lightning (fsspec[http])

    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            targets = await (await session.get(f"http://127.0.0.1:{port}/json/list")).json()
            pages = [t for t in targets if t["type"] == "page"]
            if pages:
                break
            await asyncio.sleep(0.1)
        async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            tools = DevTools(ws)
            button = "Array.from(document.querySelectorAll('button')).find(b => b.textContent.trim() == 'Generate')"
            await tools.wait_for(f"!!{button}", 60)
            await tools.evaluate(f"{button}.click()")
            source = await tools.wait_for(
                "Array.from(document.querySelectorAll('audio')).map(a => a.currentSrc || a.src).find(s => s) || ''", 60
            )
            image = await tools.wait_for(
                "Array.from(document.querySelectorAll('img')).map(i => i.src).find(s => s.includes('/file=')) || ''",
                60,
            )
            await tools.evaluate("document.querySelector('[data-testid=\"dataset-cell-1-0\"]').click()")
            example = await tools.wait_for("document.body.innerText.includes('wavekit-seed1-')", 60)
            return {"source": source, "image": image, "example": example}


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (Debian package chromium)")
def test_browser_click_generate_plays_audio(served, tmp_path):
    url, _ = served
    process = subprocess.Popen(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path}",
            "--remote-debugging-port=0", "--autoplay-policy=no-user-gesture-required", url,
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port_file = tmp_path / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        seen = asyncio.run(_drive_page(port))
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert seen["source"].startswith(("blob:", "http")), json.dumps(seen)
    assert seen["image"].startswith(url.rstrip("/"))
    assert seen["example"] is True  # the second example (seed 1) ran with one click
