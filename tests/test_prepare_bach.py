"""Tests for the bach-chorales recipe: a real music21 -> MIDI -> fluidsynth render of a few
chorale openings, idempotency, determinism, missing-tool errors and the recipe's config."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from wavekit.data import read_manifest
from wavekit.model import WaveNetConfig
from wavekit.prepare import bach_chorales, common
from wavekit.train import WaveNetModule

CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "bach-chorales" / "config.yaml"
CHORALES, MEASURES = 2, 1  # the first measure of two chorales: a few seconds of audio each


def _tools_missing() -> str | None:
    """Why a real render cannot run here, or None."""
    if shutil.which("fluidsynth") is None:
        return "fluidsynth not installed (Debian package fluidsynth)"
    if not any(p.is_file() for p in bach_chorales.SOUNDFONTS):
        return "no General MIDI SoundFont (Debian package timgm6mb-soundfont)"
    try:
        import music21  # noqa: F401
    except ImportError:
        return "music21 not installed (pip install music21)"
    return None


needs_tools = pytest.mark.skipif(_tools_missing() is not None, reason=str(_tools_missing()))


def _prepare(root: Path, workers: int = 2) -> Path:
    return bach_chorales.prepare(root / "source", root / "out", limit=CHORALES, max_measures=MEASURES, workers=workers)


def _files(root: Path) -> dict[Path, int]:
    """Every file under `root` with its mtime in ns."""
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared subset; returns its root (source/ and out/ inside)."""
    root = tmp_path_factory.mktemp("bach")
    _prepare(root)
    return root


@needs_tools
def test_manifest_lists_mono_16bit_audible_wavs(rendered: Path) -> None:
    manifest = rendered / "out" / common.MANIFEST
    utterances = read_manifest(manifest)
    names = [u.path.stem for u in utterances]
    assert names == [w.rsplit("/", 1)[-1] for w in bach_chorales.chorale_names()[:CHORALES]]
    for u in utterances:
        assert u.path.parent == (rendered / "out" / "wavs").absolute()
        info = sf.info(u.path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert u.duration == pytest.approx(info.frames / 16000)
        assert 1.0 < u.duration < 30.0  # one measure plus the release tail, not the whole chorale
        samples, _ = sf.read(u.path)
        assert np.sqrt(np.mean(samples**2)) > 0.01  # audible, not silence
        assert np.abs(samples).max() < 0.99  # not clipped
        assert u.speaker is None
        assert u.split == common.hash_split(u.path.stem, bach_chorales.VALID_FRACTION, bach_chorales.TEST_FRACTION)
    assert sorted(p.name for p in (rendered / "source" / "midi").iterdir()) == sorted(f"{n}.mid" for n in names)


@needs_tools
def test_second_run_redoes_nothing(rendered: Path) -> None:
    before = _files(rendered / "source") | _files(rendered / "out" / "wavs")
    manifest = (rendered / "out" / common.MANIFEST).read_bytes()
    _prepare(rendered)
    assert _files(rendered / "source") | _files(rendered / "out" / "wavs") == before
    assert (rendered / "out" / common.MANIFEST).read_bytes() == manifest


@needs_tools
def test_same_inputs_give_the_same_corpus(rendered: Path, tmp_path: Path) -> None:
    _prepare(tmp_path, workers=1)
    assert (tmp_path / "out" / common.MANIFEST).read_bytes() == (rendered / "out" / common.MANIFEST).read_bytes()
    for wav in sorted((rendered / "out" / "wavs").iterdir()):
        assert (tmp_path / "out" / "wavs" / wav.name).read_bytes() == wav.read_bytes()


def test_missing_fluidsynth_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    with pytest.raises(FileNotFoundError, match="fluidsynth.*Debian package fluidsynth"):
        bach_chorales.prepare(tmp_path / "source", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_soundfont_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: f"/usr/bin/{name}")
    monkeypatch.setattr(bach_chorales, "SOUNDFONTS", (tmp_path / "absent.sf2",))
    with pytest.raises(FileNotFoundError, match="absent.sf2.*timgm6mb-soundfont"):
        bach_chorales.prepare(tmp_path / "source", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="soundfont: .*other.sf2"):
        bach_chorales.prepare(tmp_path / "source", tmp_path / "out", soundfont=tmp_path / "other.sf2")
    (tmp_path / "fake.sf2").write_bytes(b"RIFF\0\0\0\0WAVEfmt ")
    with pytest.raises(ValueError, match="fake.sf2 is not a SoundFont"):
        bach_chorales.prepare(tmp_path / "source", tmp_path / "out", soundfont=tmp_path / "fake.sf2")


def test_missing_music21_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "music21", None)  # makes find_spec and import fail
    with pytest.raises(ModuleNotFoundError, match="pip install music21"):
        bach_chorales.chorale_names()


@pytest.mark.parametrize("bad", [{"limit": 0}, {"max_measures": -1}])
def test_bad_arguments_are_named(bad: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        bach_chorales.prepare(tmp_path / "source", tmp_path / "out", **bad)


@needs_tools
def test_corpus_has_the_distinct_chorales() -> None:
    names = bach_chorales.chorale_names()
    assert 300 <= len(names) <= 371  # Riemenschneider's 371 numbers, repeats counted once (350 in music21 10.5)
    assert names == sorted(set(names)) and all(n.startswith("bach/bwv") for n in names)


def test_config_is_a_valid_unconditional_recipe() -> None:
    cfg = yaml.safe_load(CONFIG.read_text())
    assert set(cfg) == {"seed_everything", "trainer", "model", "data", "ema", "checkpoint"}
    model = WaveNetConfig(**cfg["model"]["model"])
    assert (model.head, model.sample_rate, model.mel_channels, model.num_speakers) == ("mulaw", 16000, 0, 0)
    assert cfg["data"]["manifest"] == "data/bach-chorales/manifest.jsonl"
    assert cfg["trainer"]["default_root_dir"] == "runs/bach-chorales"
    assert cfg["data"]["segment_samples"] > 2 * model.receptive_field
    module_args = {k: v for k, v in cfg["model"].items() if k != "model"}
    assert WaveNetModule(model, **module_args).config == model
    assert cfg["model"]["lr_decay_steps"] <= cfg["trainer"]["max_steps"]
    assert 0.0 < cfg["ema"]["decay"] < 1.0
