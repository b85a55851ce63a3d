"""The demo's streamed player: a Gradio Audio output whose stream is AAC-encoded in-process.

Gradio 6 plays a streamed audio output as HLS segments of ADTS AAC and encodes them with
one ffmpeg process per stream: 100-150 ms of CPU to start and encode a 1 s, 16 kHz stream
on the 2-core machine, half of what generating that second with the bundled model takes.
`StreamedAudio` keeps Gradio's streaming protocol (`stream_output`, `flush_stream_output`,
`end_stream_output`; ADTS segments whose duration counts their 1024-sample frames) and
encodes with libavcodec through PyAV inside the server process: about 10 ms, and no
ffmpeg program (docs/performance.md, Demo).
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import anyio
import av
import gradio as gr
import numpy as np
import soundfile as sf
from gradio.data_classes import MediaStreamChunk

__all__ = ["AacEncoder", "StreamedAudio"]

# The sample rates an ADTS header can declare; other rates are resampled to the nearest.
ADTS_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
AAC_FRAME = 1024  # samples per AAC-LC frame (libavcodec's "aac" encoder)


class _Sink(io.RawIOBase):
    """A write-only file that keeps what the muxer writes until `take` collects it."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


class AacEncoder:
    """One mono stream's AAC encoder: 16-bit PCM chunks in, whole ADTS frames out.

    One encoder serves the whole stream: AAC frames overlap, so an encoder per chunk would
    leave a gap at every chunk boundary. Chunks of any length are taken; samples short of
    a whole frame wait for the next chunk or `flush`. Thread-safe: `close` may race an
    `encode` running in a worker thread.
    """

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self.output_rate = min(ADTS_RATES, key=lambda rate: abs(rate - sample_rate))
        self._sink = _Sink()
        # flush_packets: each frame reaches the sink as it is muxed, not when a 32 KB buffer fills.
        self._container = av.open(self._sink, "w", format="adts", options={"flush_packets": "1"})
        self._stream = self._container.add_stream("aac", rate=self.output_rate, layout="mono")
        self._resampler = av.AudioResampler(format="fltp", layout="mono", rate=self.output_rate)
        self._lock = threading.Lock()
        self._closed = False

    def encode(self, pcm: np.ndarray) -> MediaStreamChunk | None:
        """Encode mono int16 samples [T]; the frames they complete as one segment, or None."""
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ValueError(f"pcm: expected mono int16 samples [T], got {pcm.dtype} {list(pcm.shape)}")
        if not len(pcm):  # a tick that produced no audio
            return None
        frame = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        return self._encode(frame)

    def flush(self) -> MediaStreamChunk | None:
        """The frames still held (the encoder's delay and the last partial frame), then close."""
        try:
            return self._encode(None)
        finally:
            self.close()

    def close(self) -> None:
        """Release the encoder (idempotent); later calls encode nothing."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._container.close()

    def _encode(self, frame: av.AudioFrame | None) -> MediaStreamChunk | None:
        with self._lock:
            if self._closed:
                return None
            packets = [p for f in self._resampler.resample(frame) for p in self._stream.encode(f)]
            if frame is None:
                packets += self._stream.encode(None)
            for packet in packets:
                self._container.mux(packet)
            data = self._sink.take()
        if not packets:
            return None
        duration = len(packets) * AAC_FRAME / self.output_rate
        return {"data": data, "duration": duration, "extension": ".aac"}


def _read_pcm(value: bytes | dict) -> tuple[np.ndarray, int]:
    """A streamed chunk as int16 samples and its rate: WAV (or other libsndfile) bytes, or the
    local file Gradio cached for a returned path or array."""
    source = io.BytesIO(value) if isinstance(value, bytes) else Path(value["path"])
    samples, rate = sf.read(source, dtype="int16")
    if samples.ndim != 1:
        raise ValueError(f"streamed audio: expected mono chunks, got {samples.shape[1]} channels")
    return samples, rate


# Open streams by Gradio's stream id (unique to a session, run and output): None until the
# first chunk with audio sets the sample rate. The lock makes each look-and-change atomic:
# a stream may be ended (weakref finalizer, cancel) from any thread.
_open_streams: dict[str, AacEncoder | None] = {}
_open_streams_lock = threading.Lock()


class StreamedAudio(gr.Audio):
    """`gr.Audio` whose stream (with `streaming=True`) is encoded by an in-process `AacEncoder`.

    The page shows it as an ordinary Audio player (`is_template`). A handler yields each
    chunk as mono WAV bytes, or a local mono file or array that `gr.Audio` caches as WAV;
    unlike Gradio's own path there is no ffmpeg to downmix, resample or fetch URLs.
    """

    is_template = True

    async def stream_output(self, value, output_id: str, first_chunk: bool) -> tuple[MediaStreamChunk | None, dict]:
        output_file = {
            "path": output_id, "is_stream": True, "orig_name": "audio-stream.mp3", "meta": {"_type": "gradio.FileData"},
        }  # fmt: skip
        if first_chunk:
            self.end_stream_output(output_id)  # a key is never shared by two live streams
            with _open_streams_lock:
                _open_streams[output_id] = None
        if value is None:
            return None, output_file
        try:
            return await anyio.to_thread.run_sync(_encode_chunk, output_id, value), output_file
        except BaseException:
            if first_chunk:  # Gradio opens the stream, and would end it, only once this returns
                self.end_stream_output(output_id)
            raise

    async def flush_stream_output(self, output_id: str) -> MediaStreamChunk | None:
        with _open_streams_lock:
            encoder = _open_streams.pop(output_id, None)
        if encoder is None:
            return None
        try:
            return await anyio.to_thread.run_sync(encoder.flush)
        except BaseException:  # cancelled before the thread ran: nothing else holds the encoder now
            encoder.close()
            raise

    def end_stream_output(self, output_id: str) -> None:
        with _open_streams_lock:
            encoder = _open_streams.pop(output_id, None)
        if encoder is not None:
            encoder.close()


def _encode_chunk(output_id: str, value: bytes | dict) -> MediaStreamChunk | None:
    """Decode and encode one chunk of stream `output_id` (in a worker thread); None once it has ended."""
    samples, rate = _read_pcm(value)
    with _open_streams_lock:
        if output_id not in _open_streams:  # ended (cancel, disconnect) while this chunk was in flight
            return None
        encoder = _open_streams[output_id]
        if encoder is None:
            encoder = _open_streams[output_id] = AacEncoder(rate)
    if rate != encoder.sample_rate:
        raise ValueError(f"streamed audio: a chunk at {rate} Hz in a stream at {encoder.sample_rate} Hz")
    return encoder.encode(samples)  # None if the stream was ended meanwhile (the encoder closed)
