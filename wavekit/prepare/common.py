"""Steps every recipe's preparation shares: fetch an archive (download, checksum, extract,
each skipped when already done), convert a corpus's audio to the training format (mono
16-bit WAV at the recipe's rate, bad files skipped with one warning line each) and write
the JSONL manifest that `wavekit.data` reads.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import urllib.request
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from wavekit import audio
from wavekit.data import Utterance, write_manifest

__all__ = ["SourceFile", "download", "extract", "fetch", "convert", "hash_split", "MANIFEST"]

log = logging.getLogger("wavekit.prepare")

MANIFEST = "manifest.jsonl"
DOWNLOAD_TIMEOUT = 60  # seconds without a byte before a download is given up


@dataclass(frozen=True)
class SourceFile:
    """One recording of a corpus: where it is, the name its WAV gets (a relative path without
    suffix, unique in the corpus), its speaker (or None) and its split."""

    path: Path
    name: str
    speaker: str | None
    split: str


def _file_hash(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, *, sha256: str | None = None, md5: str | None = None) -> Path:
    """Fetch `url` to `dest` unless a file with the expected checksum is already there.

    Downloads go to a temporary file renamed into place once complete and verified, so an
    interrupted download is never mistaken for a finished one. Raises OSError naming the URL
    if the download fails and ValueError if the checksum differs.
    """
    algorithm, expected = ("sha256", sha256) if sha256 else ("md5", md5) if md5 else (None, None)
    stale = ""
    if dest.is_file():
        if expected is None or _file_hash(dest, algorithm) == expected:
            log.info("%s: already downloaded", dest)
            return dest
        stale = f"; the file already there has the wrong {algorithm} (cut short, or another version?)"
        log.warning("%s: its %s is not the expected %s; downloading it again", dest, algorithm, expected)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    log.info("downloading %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, open(partial, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
            size = response.headers.get("Content-Length")  # urllib returns a cut-off body without complaint
            if size is not None and f.tell() != int(size):
                raise OSError(f"the connection closed after {f.tell()} of {size} bytes")
    except (OSError, http.client.HTTPException) as err:  # HTTPException: e.g. a broken chunked body
        partial.unlink(missing_ok=True)
        raise OSError(f"could not download {url} ({err}); fetch it by hand and place it at {dest}{stale}") from err
    if expected is not None and (actual := _file_hash(partial, algorithm)) != expected:
        partial.unlink()
        raise ValueError(f"{url}: {algorithm} is {actual}, expected {expected}; the download is corrupt")
    os.replace(partial, dest)
    return dest


def extract(archive: Path, dest: Path) -> Path:
    """Unpack a tar (any compression) or zip `archive` into `dest`, once.

    A marker file in `dest` records a finished extraction, so an interrupted one is redone
    and a finished one skipped. Members that would land outside `dest` are refused.
    """
    marker = dest / f".extracted-{archive.name}"
    if marker.is_file():
        log.info("%s: already extracted into %s", archive, dest)
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    log.info("extracting %s -> %s", archive, dest)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            root = dest.resolve()
            for name in z.namelist():
                if not (dest / name).resolve().is_relative_to(root):
                    raise ValueError(f"{archive}: member {name!r} would be written outside {dest}")
            z.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")
    else:
        raise ValueError(f"{archive}: not a tar or zip archive")
    marker.touch()
    return dest


def fetch(
    corpus: str, url: str, archive: Path, unpack_to: Path, present: Path, *, sha256: str | None = None, md5: str | None = None
) -> None:
    """Make sure `present` (a file or folder of the unpacked corpus) exists: download `url` to
    `archive` unless `present` is already there, then unpack it into `unpack_to` (once; an
    interrupted unpack is finished). Raises FileNotFoundError saying which step failed and
    how to provide the corpus by hand."""
    if not present.exists():
        try:
            download(url, archive, sha256=sha256, md5=md5)
        except OSError as err:
            raise FileNotFoundError(
                f"{corpus} is not in {unpack_to} (no {present}) and the download step failed: {err}; "
                f"or unpack the archive into {unpack_to} yourself"
            ) from err
    if archive.is_file():
        extract(archive, unpack_to)
    if not present.exists():
        raise FileNotFoundError(f"{archive} did not unpack to {present}; is it {corpus} from {url}?")


def hash_split(name: str, valid_fraction: float, test_fraction: float = 0.0) -> str:
    """A split for `name` that depends on the name only: stable across runs and corpus growth."""
    x = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
    return "test" if x < test_fraction else "valid" if x < test_fraction + valid_fraction else "train"


def _convert_one(source: SourceFile, wav: Path, sample_rate: int, min_seconds: float) -> Utterance:
    """Write `source` as `wav` (unless done before) and return its manifest entry; AudioError if unusable."""
    if not wav.is_file():
        samples = audio.load(source.path, sample_rate)
        if len(samples) < min_seconds * sample_rate:
            raise audio.AudioError(f"{source.path}: {len(samples) / sample_rate:.3f} s is shorter than {min_seconds} s")
        wav.parent.mkdir(parents=True, exist_ok=True)
        partial = wav.with_name(f".{wav.name}.part.wav")
        audio.save(partial, samples, sample_rate)
        os.replace(partial, wav)
    frames = sf.info(wav).frames
    return Utterance(wav, frames / sample_rate, source.speaker, source.split)


def convert(
    sources: Sequence[SourceFile],
    out_dir: Path,
    sample_rate: int,
    *,
    min_seconds: float = 0.1,
    workers: int = 2,
) -> Path:
    """Convert `sources` to `out_dir/wavs/<name>.wav` and write `out_dir/manifest.jsonl`.

    Files already converted are reused, so a second run redoes nothing. A file that cannot be
    read, is not audio, holds NaN/inf or is shorter than `min_seconds` is skipped with one
    warning line naming it, and a summary line counts the skips; stereo, other rates and
    other sample formats are converted. Raises ValueError if nothing usable is left.
    """
    first: dict[str, SourceFile] = {}
    for source in sources:
        if (other := first.setdefault(source.name, source)) is not source:
            raise ValueError(f"convert: {other.path} and {source.path} both map to the output name {source.name!r}")
    wav_dir = out_dir / "wavs"

    def work(source: SourceFile) -> Utterance | None:
        try:
            return _convert_one(source, wav_dir / f"{source.name}.wav", sample_rate, min_seconds)
        except audio.AudioError as err:
            log.warning("skipping %s", err)
            return None

    utterances = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        converted = pool.map(work, sources)
        for utterance in tqdm(converted, total=len(sources), desc=f"converting into {out_dir}", unit="file"):
            if utterance is not None:
                utterances.append(utterance)
    if skipped := len(sources) - len(utterances):
        log.warning("skipped %d of %d files (see the warnings above)", skipped, len(sources))
    if not utterances:
        raise ValueError(f"{out_dir}: none of the {len(sources)} source files is usable audio")
    manifest = out_dir / MANIFEST
    write_manifest(manifest, utterances)
    hours = sum(u.duration for u in utterances) / 3600
    log.info("%s: %d utterances, %.2f h at %d Hz", manifest, len(utterances), hours, sample_rate)
    return manifest
