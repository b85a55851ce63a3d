"""Corpus preparation: the shared download / extract / convert steps and the flite-speech recipe."""

from __future__ import annotations

import hashlib
import http.server
import io
import logging
import os
import re
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavekit.cli import main
from wavekit.data import read_manifest
from wavekit.prepare import RECIPES, flite_speech, prepare
from wavekit.prepare.common import SourceFile, convert, download, extract, hash_split


def _tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 330 * t).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.fixture
def corpus(tmp_path: Path) -> list[SourceFile]:
    """Good files in several formats, and one of each kind of bad file."""
    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "mono.wav", _tone(0.5, 16000), 16000)
    sf.write(src / "stereo.wav", _tone(0.5, 16000, 2), 16000)
    sf.write(src / "rate.flac", _tone(0.5, 44100), 44100)
    sf.write(src / "u8.wav", _tone(0.5, 16000), 16000, subtype="PCM_U8")
    (src / "empty.wav").write_bytes(b"")
    sf.write(src / "truncated.wav", _tone(0.5, 16000), 16000)
    with open(src / "truncated.wav", "r+b") as f:
        f.truncate(2000)
    (src / "text.wav").write_text("this is not audio")
    sf.write(src / "nan.wav", np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    sf.write(src / "short.wav", _tone(0.01, 16000), 16000)
    return [SourceFile(p, p.stem, "x", "train") for p in sorted(src.iterdir())]


GOOD = {"mono", "stereo", "rate", "u8"}


def test_convert_keeps_convertible_files_and_skips_bad_ones_one_line_each(corpus, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="wavekit.prepare"):
        manifest = convert(corpus, tmp_path / "out", 16000)
    entries = read_manifest(manifest)
    assert {e.path.stem for e in entries} == GOOD
    for e in entries:
        info = sf.info(e.path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert e.duration == pytest.approx(0.5, abs=1e-3)
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert len(skips) == 5
    for name in ("empty", "truncated", "text", "nan", "short"):
        assert sum(f"{name}.wav" in s for s in skips) == 1
    assert any("skipped 5 of 9 files" in r.getMessage() for r in caplog.records)


def test_convert_is_idempotent(corpus, tmp_path):
    manifest = convert(corpus, tmp_path / "out", 16000)
    wavs = sorted((tmp_path / "out" / "wavs").iterdir())
    stamps = [w.stat().st_mtime_ns for w in wavs]
    first = manifest.read_text()
    convert(corpus, tmp_path / "out", 16000)
    assert [w.stat().st_mtime_ns for w in wavs] == stamps
    assert manifest.read_text() == first


def test_convert_refuses_duplicate_names_and_an_all_bad_corpus(corpus, tmp_path):
    twin = SourceFile(corpus[1].path, corpus[0].name, None, "train")
    with pytest.raises(ValueError, match=re.escape(f"{corpus[0].path} and {twin.path} both map to the output name")):
        convert([corpus[0], twin], tmp_path / "a", 16000)
    bad = [s for s in corpus if s.name not in GOOD]
    with pytest.raises(ValueError, match="none of the 5"):
        convert(bad, tmp_path / "b", 16000)


def test_download_verifies_and_skips_what_is_there(tmp_path):
    payload = b"corpus bytes" * 100
    (tmp_path / "remote.bin").write_bytes(payload)
    url = (tmp_path / "remote.bin").as_uri()
    digest = hashlib.sha256(payload).hexdigest()
    dest = download(url, tmp_path / "dl" / "corpus.bin", sha256=digest)
    assert dest.read_bytes() == payload
    (tmp_path / "remote.bin").unlink()  # a second call must not fetch again
    assert download(url, dest, sha256=digest) == dest
    with pytest.raises(ValueError, match="md5"):
        (tmp_path / "remote.bin").write_bytes(b"tampered")
        download(url, tmp_path / "dl" / "other.bin", md5="0" * 32)
    assert not (tmp_path / "dl" / "other.bin").exists() and not (tmp_path / "dl" / "other.bin.part").exists()
    with pytest.raises(OSError, match="fetch it by hand"):
        download((tmp_path / "absent.bin").as_uri(), tmp_path / "dl" / "absent.bin")
    (tmp_path / "dl" / "placed.bin").write_bytes(b"a different version")  # placed by hand, offline
    with pytest.raises(OSError, match="the file already there has the wrong sha256"):
        download((tmp_path / "absent.bin").as_uri(), tmp_path / "dl" / "placed.bin", sha256=digest)


def test_download_cut_off_mid_body_is_an_oserror_and_leaves_no_partial_file(tmp_path):
    class CutOff(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"only ten b")  # then the connection closes

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), CutOff)
    threading.Thread(target=server.handle_request, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/corpus.tar"
    try:
        with pytest.raises(OSError, match=re.escape(f"could not download {url}")):
            download(url, tmp_path / "corpus.tar")
    finally:
        server.server_close()
    assert list(tmp_path.iterdir()) == []


def test_extract_unpacks_tar_and_zip_once(tmp_path):
    tar_path, zip_path = tmp_path / "c.tar.gz", tmp_path / "c.zip"
    with tarfile.open(tar_path, "w:gz") as t:
        info = tarfile.TarInfo("corpus/a.txt")
        info.size = 2
        t.addfile(info, io.BytesIO(b"hi"))
    with zipfile.ZipFile(zip_path, "w") as z:
        z.writestr("corpus/b.txt", "yo")
    out = tmp_path / "x"
    extract(tar_path, out)
    extract(zip_path, out)
    assert (out / "corpus/a.txt").read_text() == "hi" and (out / "corpus/b.txt").read_text() == "yo"
    (out / "corpus/a.txt").unlink()
    extract(tar_path, out)  # marked done: not unpacked again
    assert not (out / "corpus/a.txt").exists()


def test_extract_refuses_paths_outside_the_destination(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("../escaped.txt", "x")
    with pytest.raises(ValueError, match="outside"):
        extract(tmp_path / "evil.zip", tmp_path / "x")
    assert not (tmp_path / "escaped.txt").exists()
    (tmp_path / "plain.txt").write_text("neither tar nor zip")
    with pytest.raises(ValueError, match="plain.txt"):
        extract(tmp_path / "plain.txt", tmp_path / "y")


def test_hash_split_is_stable_and_near_its_fractions():
    names = [f"utt{i}" for i in range(4000)]
    splits = [hash_split(n, 0.1, 0.05) for n in names]
    assert splits == [hash_split(n, 0.1, 0.05) for n in names]
    assert abs(splits.count("valid") / 4000 - 0.1) < 0.02 and abs(splits.count("test") / 4000 - 0.05) < 0.015


def test_unknown_recipe_names_the_choices():
    with pytest.raises(ValueError, match="flite-speech"):
        prepare("timit")
    assert "flite-speech" in RECIPES and "bach-chorales" in RECIPES


def test_sentences_are_deterministic_and_varied():
    a = flite_speech.sentences(200, seed=1)
    assert a == flite_speech.sentences(200, seed=1) and a != flite_speech.sentences(200, seed=2)
    assert len(set(a)) > 190 and all(s[0].isupper() and s[-1] in ".?" for s in a)


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed (apt-get install flite)")
def test_flite_speech_builds_a_four_speaker_corpus_once(tmp_path):
    manifest = flite_speech.prepare(tmp_path / "source", tmp_path / "out", sentences_per_voice=2)
    entries = read_manifest(manifest)
    assert sorted({e.speaker for e in entries}) == list(flite_speech.VOICES) and len(entries) == 8
    for e in entries:
        wave, rate = sf.read(e.path)
        assert rate == 16000 and wave.ndim == 1 and e.duration > 1.0 and np.abs(wave).max() > 0.05
    texts = (tmp_path / "source" / "sentences.txt").read_text().splitlines()
    assert len(texts) == 8 and len({t.split("\t")[1] for t in texts}) == 8  # no two speakers share a text
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "source").rglob("*.wav")}
    flite_speech.prepare(tmp_path / "source", tmp_path / "out", sentences_per_voice=2)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "source").rglob("*.wav")} == stamps


def _fake_flite(tmp_path: Path, voices: str, speak: str) -> str:
    """A `flite` that lists `voices` and runs the shell line `speak` to say anything."""
    script = tmp_path / "flite"
    script.write_text(f'#!/bin/sh\nif [ "$1" = -lv ]; then echo "Voices available: {voices}"; exit 0; fi\n{speak}\n')
    script.chmod(0o755)
    return str(script)


def test_flite_speech_refuses_a_flite_without_its_voices(tmp_path, monkeypatch):
    flite = _fake_flite(tmp_path, "kal awb slt", "exit 0")
    monkeypatch.setattr(shutil, "which", lambda name: flite)
    with pytest.raises(ChildProcessError, match="lacks the voice\\(s\\) kal16, rms"):
        flite_speech.prepare(tmp_path / "source", tmp_path / "out", sentences_per_voice=1)


def test_flite_speech_failure_names_the_utterance_and_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    flite = _fake_flite(tmp_path, "kal16 awb rms slt", 'echo "out of memory" >&2; exit 3')
    monkeypatch.setattr(shutil, "which", lambda name: flite)
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "flite-speech", "--data-dir", str(tmp_path / "source"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert re.search(r"flite failed on \w+_0000\.wav \(\w+\): out of memory", err)
    assert not list((tmp_path / "source").rglob("*.wav"))


def test_flite_speech_without_flite_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install flite"):
        flite_speech.prepare(tmp_path / "source", tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")


def test_flite_speech_config_matches_the_corpus():
    import yaml

    from wavekit.model import WaveNetConfig

    config = yaml.safe_load((Path(__file__).parents[1] / "recipes/flite-speech/config.yaml").read_text())
    model = WaveNetConfig(**config["model"]["model"])
    assert model.speaker_names == tuple(sorted(flite_speech.VOICES)) and model.sample_rate == flite_speech.SAMPLE_RATE
    assert config["data"]["segment_samples"] % model.hop_length == 0
