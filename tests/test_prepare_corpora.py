"""Tests for the real-corpus recipes (ljspeech, vctk, maestro, nsynth) on tiny fixtures that copy
each corpus's layout, file formats and archive format; nothing is ever downloaded."""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml

from fixtures_corpora import build_ljspeech, build_maestro, build_nsynth, build_vctk, pack
from wavekit.data import WaveNetDataModule, read_manifest
from wavekit.model import WaveNetConfig
from wavekit.prepare import ljspeech, maestro, nsynth, prepare, vctk
from wavekit.train import WaveNetModule

RECIPES = {"ljspeech": (ljspeech, build_ljspeech), "vctk": (vctk, build_vctk),
           "maestro": (maestro, build_maestro), "nsynth": (nsynth, build_nsynth)}  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails as it would offline."""

    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError(f"network disabled in tests ({url})")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def warnings(caplog):
    caplog.set_level(logging.WARNING, logger="wavekit.prepare")
    return caplog


def _digest(path: Path, algorithm: str) -> str:
    return hashlib.new(algorithm, path.read_bytes()).hexdigest()


def _accept_archives(monkeypatch, recipe: str, archives: list[Path]) -> None:
    """Make the recipe's published checksum(s) those of the fixture archive(s)."""
    if recipe == "nsynth":
        for archive in archives:
            split = archive.name.split("-")[1].split(".")[0]
            monkeypatch.setitem(nsynth.MD5, split, _digest(archive, "md5"))
    else:
        monkeypatch.setattr(RECIPES[recipe][0], "SHA256", _digest(archives[0], "sha256"))


def _stamp(path: Path) -> tuple[int, int, int]:
    """Changes whenever the file is rewritten, even by an extraction that restores its mtime."""
    info = path.stat()
    return info.st_ino, info.st_mtime_ns, info.st_ctime_ns


def _check_manifest(manifest: Path, out_dir: Path, expected: dict, sample_rate: int) -> None:
    """The manifest holds exactly the expected WAVs, as mono 16-bit files at `sample_rate`."""
    utterances = read_manifest(manifest)
    got = {u.path.relative_to(out_dir.absolute()).as_posix(): u for u in utterances}
    assert sorted(got) == sorted(expected)
    for name, (speaker, split, seconds) in expected.items():
        u = got[name]
        assert (u.speaker, u.split) == (speaker, split), name
        assert u.duration == pytest.approx(seconds, abs=2e-3), name
        info = sf.info(u.path)
        assert (info.samplerate, info.channels, info.subtype) == (sample_rate, 1, "PCM_16"), name
        assert info.frames == round(u.duration * sample_rate)


def _check_skips(caplog, bad: list[Path], total: int) -> None:
    """One warning line per bad file and a summary line counting them."""
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for path in bad:
        assert sum(str(path) in line for line in lines) == 1, (path, lines)
    assert sum(f"skipped {len(bad)} of {total} files" in line for line in lines) == 1, lines


@pytest.mark.parametrize("recipe", RECIPES)
def test_prepare_from_the_real_archive_format_then_again(tmp_path, monkeypatch, warnings, recipe):
    module, build = RECIPES[recipe]
    data_dir, out_dir = tmp_path / "source", tmp_path / "out"
    corpus = build(data_dir)
    _accept_archives(monkeypatch, recipe, pack(recipe, data_dir))

    assert {split for _, split, _ in corpus.expected.values()} == {"train", "valid", "test"}
    manifest = prepare(recipe, data_dir, out_dir)
    assert manifest == out_dir / "manifest.jsonl"
    _check_manifest(manifest, out_dir, corpus.expected, module.SAMPLE_RATE)
    _check_skips(warnings, corpus.bad, len(corpus.expected) + len(corpus.bad))

    files = sorted(out_dir.rglob("*.wav")) + sorted(data_dir.rglob("*"))
    stamps = {path: _stamp(path) for path in files}
    text = manifest.read_text()
    assert prepare(recipe, data_dir, out_dir) == manifest  # no re-extraction, no re-conversion
    assert {path: _stamp(path) for path in files} == stamps
    assert sorted(out_dir.rglob("*.wav")) + sorted(data_dir.rglob("*")) == files
    assert manifest.read_text() == text


@pytest.mark.parametrize("recipe", RECIPES)
def test_an_extracted_corpus_needs_no_archive(tmp_path, recipe):
    module, build = RECIPES[recipe]
    corpus = build(tmp_path / "source")
    manifest = module.prepare(tmp_path / "source", tmp_path / "out")  # urlopen refuses: nothing fetched
    _check_manifest(manifest, tmp_path / "out", corpus.expected, module.SAMPLE_RATE)


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_missing_corpus_names_the_download(tmp_path, recipe):
    module = RECIPES[recipe][0]
    url = module.URLS["train"] if recipe == "nsynth" else module.URL
    with pytest.raises(FileNotFoundError) as err:
        module.prepare(tmp_path / "source", tmp_path / "out")
    message = str(err.value)
    assert "download step failed" in message and url in message
    assert str(tmp_path / "source" / url.rsplit("/", 1)[1]) in message  # where to place it by hand
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("recipe", RECIPES)
def test_config_and_prepared_manifest_work_together(tmp_path, recipe):
    module, build = RECIPES[recipe]
    config_path = ROOT / "recipes" / recipe / "config.yaml"
    values = yaml.safe_load(config_path.read_text())
    assert list(values) == ["seed_everything", "trainer", "model", "data", "ema", "checkpoint"]
    assert values["data"]["manifest"] == f"data/{recipe}/manifest.jsonl"
    assert values["trainer"]["default_root_dir"] == f"runs/{recipe}"
    config = WaveNetConfig(**values["model"]["model"])
    assert config.sample_rate == module.SAMPLE_RATE
    assert values["data"]["segment_samples"] > config.receptive_field

    corpus = build(tmp_path / "source")
    manifest = module.prepare(tmp_path / "source", tmp_path / "out")
    speakers = {speaker for speaker, _, _ in corpus.expected.values()} - {None}
    assert speakers <= set(config.speaker_names)
    assert config.speaker_names == {"vctk": vctk.SPEAKERS, "nsynth": nsynth.FAMILIES}.get(recipe, ())
    assert config.num_speakers == len(config.speaker_names)

    small = {**values["model"]["model"], "layers": 2, "stacks": 1, "residual_channels": 4, "gate_channels": 4,
             "skip_channels": 4}  # fmt: skip
    module_args = {**values["model"], "model": small}
    lit = WaveNetModule(**module_args)
    data = WaveNetDataModule(str(manifest), lit.config, values["data"]["segment_samples"], batch_size=2)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch["audio"].shape[-1] == values["data"]["segment_samples"]
    assert torch.isfinite(lit.net.log_prob(batch["audio"], batch.get("mel"), batch.get("speaker"))).all()


def test_ljspeech_metadata_keeps_quotes_literal(tmp_path):
    build_ljspeech(tmp_path)
    rows = (tmp_path / "LJSpeech-1.1" / "metadata.csv").read_text().splitlines()
    files = ljspeech.sources(tmp_path / "LJSpeech-1.1")
    assert [f.name for f in files] == [row.split("|")[0] for row in rows]  # an unclosed quote ends no row


def test_ljspeech_bad_metadata_row_names_its_line(tmp_path):
    build_ljspeech(tmp_path)
    metadata = tmp_path / "LJSpeech-1.1" / "metadata.csv"
    metadata.write_text(metadata.read_text() + "LJ009-0001|only two fields\n")
    with pytest.raises(ValueError, match=rf"metadata.csv:{len(metadata.read_text().splitlines())}: expected"):
        ljspeech.sources(tmp_path / "LJSpeech-1.1")


def test_vctk_mic2_lacks_p280_and_p315(tmp_path, warnings):
    build_vctk(tmp_path / "source")
    manifest = vctk.prepare(tmp_path / "source", tmp_path / "out", mic="mic2")
    assert sorted(u.path.stem for u in read_manifest(manifest)) == ["p225_001", "p225_006", "s5_016"]
    missing = [r.getMessage() for r in warnings.records if "no mic2 recordings" in r.getMessage()]
    assert len(missing) == 1 and "p280" in missing[0] and "p315" in missing[0] and "p225" not in missing[0]
    assert any("p999: not a VCTK 0.92 speaker" in r.getMessage() for r in warnings.records)


def test_vctk_rejects_an_unknown_mic_before_fetching(tmp_path):
    with pytest.raises(ValueError, match="mic: expected one of mic1, mic2, got 'mic3'"):
        vctk.prepare(tmp_path / "source", tmp_path / "out", mic="mic3")


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("split", "dev", "split must be one of train, validation, test, got 'dev'"),
        ("audio_filename", "../../etc/x.wav", "audio_filename must be a relative .wav path"),
    ],
)
def test_maestro_bad_csv_rows_name_their_line(tmp_path, column, value, message):
    build_maestro(tmp_path)
    metadata = tmp_path / "maestro-v3.0.0" / "maestro-v3.0.0.csv"
    header, first, *rest = metadata.read_text(encoding="utf-8").splitlines()
    fields = dict(zip(header.split(","), ["X", "Y", "train", "2018", "2018/a.midi", "2018/a.wav", "1.0"]))
    fields[column] = value
    metadata.write_text("\n".join([header, first, ",".join(fields.values()), *rest]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"maestro-v3.0.0.csv:3: {message}"):
        maestro.sources(tmp_path / "maestro-v3.0.0")


def test_nsynth_unknown_family_is_an_error(tmp_path):
    build_nsynth(tmp_path)
    examples = tmp_path / "nsynth-test" / "examples.json"
    examples.write_text(examples.read_text().replace('"keyboard"', '"theremin"'))
    with pytest.raises(ValueError, match="keyboard_acoustic_004-061-025"):
        nsynth.sources(tmp_path / "nsynth-test", "test")
