"""Tests for the demo's in-process AAC stream (wavekit/streamed_audio.py): what the segments
decode to (the input, continuous across chunk boundaries, nothing lost at the end), the
durations the playlist gets, rates ADTS cannot declare, and Gradio's stream protocol
(open, encode, flush, end, a chunk after a cancel). The served demo's stream is checked in
tests/test_demo.py."""

from __future__ import annotations

import asyncio
import io

import av
import numpy as np
import pytest
import soundfile as sf

from wavekit import streamed_audio
from wavekit.streamed_audio import AacEncoder, StreamedAudio

RATE = 16000
PRIMING = 1024  # the AAC encoder's delay: one frame of silence before the input


def sine(seconds: float, rate: int = RATE, hz: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """ADTS bytes -> float samples in [-1, 1] and their rate."""
    with av.open(io.BytesIO(data), format="adts") as container:
        frames = list(container.decode(audio=0))
    return np.concatenate([f.to_ndarray().ravel() for f in frames]), frames[0].sample_rate


def wav(samples: np.ndarray, rate: int = RATE) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_segments_decode_to_the_input_seamless_across_chunks():
    signal = sine(1.5)
    encoder = AacEncoder(RATE)
    cuts = np.cumsum([3000, 5000, 1, 8000])  # chunk lengths that are no multiple of a frame
    segments = [encoder.encode(chunk) for chunk in np.split(signal, cuts)] + [encoder.flush()]
    segments = [s for s in segments if s is not None]
    decoded, rate = decode(b"".join(s["data"] for s in segments))
    assert rate == RATE and all(s["extension"] == ".aac" for s in segments)
    # Each segment's duration is its frames' length, so the playlist adds up to what decodes.
    assert sum(s["duration"] for s in segments) == pytest.approx(len(decoded) / RATE, abs=1e-9)
    assert len(decoded) >= len(signal) + PRIMING  # the flush leaves no input behind
    # Chunked, the stream is the very bytes of the whole signal encoded at once: no seams.
    whole = AacEncoder(RATE)
    assert b"".join(s["data"] for s in segments) == b"".join(s["data"] for s in (whole.encode(signal), whole.flush()))
    reference = signal / 32768.0
    error = decoded[PRIMING : PRIMING + len(signal)] - reference
    assert 10 * np.log10(np.mean(reference**2) / np.mean(error**2)) > 25  # AAC's own loss: about 31 dB


def test_a_chunk_shorter_than_a_frame_waits_for_the_next():
    encoder = AacEncoder(RATE)
    assert encoder.encode(sine(0.01)) is None  # 160 samples: no frame complete yet
    assert encoder.encode(np.zeros(0, np.int16)) is None  # a tick with no audio
    assert encoder.flush() is not None


def test_a_rate_adts_cannot_declare_is_resampled_to_the_nearest():
    encoder = AacEncoder(22000)
    assert encoder.output_rate == 22050
    segments = [encoder.encode(sine(1.0, 22000)), encoder.flush()]
    decoded, rate = decode(b"".join(s["data"] for s in segments if s))
    assert rate == 22050
    assert sum(s["duration"] for s in segments if s) == pytest.approx(len(decoded) / 22050, abs=1e-9)
    assert len(decoded) >= 22050 + PRIMING


def test_a_closed_encoder_encodes_nothing():
    encoder = AacEncoder(RATE)
    encoder.close()
    assert encoder.encode(sine(1.0)) is None and encoder.flush() is None


def test_bad_pcm_is_named():
    with pytest.raises(ValueError, match="pcm: expected mono int16"):
        AacEncoder(RATE).encode(sine(0.1).astype(np.float32))


def test_stream_protocol_open_encode_flush_and_cancel():
    player = StreamedAudio(streaming=True)
    assert player.get_block_name() == "audio"  # the page shows Gradio's own Audio player

    async def run() -> None:
        chunk, file = await player.stream_output(None, "s/r/1/playlist.m3u8", True)  # opens on no audio
        assert chunk is None and file["is_stream"] and file["path"] == "s/r/1/playlist.m3u8"
        first, _ = await player.stream_output(wav(sine(1.0)), "s/r/1/playlist.m3u8", False)
        last = await player.flush_stream_output("s/r/1/playlist.m3u8")
        decoded, _ = decode(first["data"] + last["data"])
        assert len(decoded) >= RATE + PRIMING
        assert await player.flush_stream_output("s/r/1/playlist.m3u8") is None  # flushed once

        await player.stream_output(wav(sine(0.5)), "s/r/2/playlist.m3u8", True)
        player.end_stream_output("s/r/2/playlist.m3u8")  # a cancel or disconnect
        assert "s/r/2/playlist.m3u8" not in streamed_audio._open_streams
        assert (await player.stream_output(wav(sine(0.5)), "s/r/2/playlist.m3u8", False))[0] is None

        await player.stream_output(wav(sine(0.5)), "s/r/3/playlist.m3u8", True)
        with pytest.raises(ValueError, match="a chunk at 8000 Hz in a stream at 16000 Hz"):
            await player.stream_output(wav(sine(0.5, 8000), 8000), "s/r/3/playlist.m3u8", False)
        player.end_stream_output("s/r/3/playlist.m3u8")
        stereo = wav(np.stack([sine(0.5)] * 2, axis=1))
        with pytest.raises(ValueError, match="expected mono chunks, got 2 channels"):
            await player.stream_output(stereo, "s/r/4/playlist.m3u8", True)
        assert "s/r/4/playlist.m3u8" not in streamed_audio._open_streams  # a failed open left nothing
        assert streamed_audio._open_streams == {}

    asyncio.run(run())
