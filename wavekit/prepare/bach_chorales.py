"""`wavekit prepare bach-chorales`: the Bach chorales of music21's corpus, rendered offline.

Nothing is downloaded: music21 ships the four-part chorales (the Riemenschneider set, 371
numbers over 350 distinct scores). Each score is exported to MIDI with every part on the
General MIDI Church Organ at a fixed tempo (grace notes dropped), rendered with the
fluidsynth command line at 16 kHz (no reverb or chorus), and converted into the manifest by
`common.convert`:

    data_dir/midi/<name>.mid        music21's MIDI export
    data_dir/rendered/<name>.wav    fluidsynth's stereo render
    out_dir/wavs/<name>.wav         mono 16-bit WAV, listed in out_dir/manifest.jsonl

Files that exist are reused, so a second run renders nothing; the same inputs give the same
manifest. Splits hash the chorale's name (e.g. "bwv269"): 10% valid, 5% test.
Needs the fluidsynth command (Debian package fluidsynth), a General MIDI SoundFont (Debian
package timgm6mb-soundfont or fluid-soundfont-gm) and the music21 Python package.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from wavekit.prepare import common

__all__ = ["SAMPLE_RATE", "TEMPO_BPM", "GAIN", "SOUNDFONTS", "chorale_names", "prepare"]

log = logging.getLogger("wavekit.prepare")

SAMPLE_RATE = 16000
TEMPO_BPM = 80  # quarter notes per minute: an unhurried chorale tempo (the scores carry none)
GAIN = 1.0  # fluidsynth master gain: four organ voices peak near -7 dBFS, far from clipping
VALID_FRACTION, TEST_FRACTION = 0.10, 0.05
RENDER_TIMEOUT = 60  # seconds; a chorale renders in about one, a stuck note would render forever
SOUNDFONTS = (  # searched in this order, so a machine with both renders with the first
    Path("/usr/share/sounds/sf2/TimGM6mb.sf2"),  # Debian timgm6mb-soundfont
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),  # Debian fluid-soundfont-gm
)


def _require_music21() -> None:
    if importlib.util.find_spec("music21") is None:
        raise ModuleNotFoundError("the bach-chorales recipe needs music21 (corpus, MIDI export): pip install music21")


def _find_soundfont(soundfont: str | os.PathLike | None) -> Path:
    """`soundfont`, or the first of SOUNDFONTS present; FileNotFoundError/ValueError if unusable."""
    if soundfont is None:
        soundfont = next((p for p in SOUNDFONTS if p.is_file()), None)
        if soundfont is None:
            raise FileNotFoundError(
                f"no General MIDI SoundFont at {' or '.join(map(str, SOUNDFONTS))}; install the Debian package "
                "timgm6mb-soundfont (or fluid-soundfont-gm), or pass soundfont="
            )
    soundfont = Path(soundfont)
    if not soundfont.is_file():
        raise FileNotFoundError(f"soundfont: {soundfont} does not exist")
    with open(soundfont, "rb") as f:
        header = f.read(12)
    if header[:4] != b"RIFF" or header[8:12] != b"sfbk":
        raise ValueError(f"soundfont: {soundfont} is not a SoundFont 2 (.sf2) file")
    return soundfont


def chorale_names() -> list[str]:
    """The distinct chorales of music21's corpus as corpus paths ("bach/bwv269", ...), sorted."""
    _require_music21()
    from music21 import corpus

    if not corpus.getComposer("bach"):
        raise FileNotFoundError("music21 is installed without its corpus; reinstall it from PyPI: pip install music21")
    return sorted(set(corpus.chorales.Iterator(returnType="filename")))


def _write_midi(work: str, midi: Path, max_measures: int | None) -> None:
    """Export corpus `work` to `midi`: every part on the Church Organ at TEMPO_BPM, no grace notes.

    Grace notes have no duration, and music21 writes their note-off before their note-on,
    which leaves a note that never ends (fluidsynth then renders forever).
    """
    from music21 import corpus, instrument, tempo

    score = corpus.parse(work, fileExtensions=("mxl", "xml"))  # MusicXML: a few also come as **kern
    if max_measures is not None:
        score = score.measures(0, max_measures)
    dropped = [n for n in score.recurse().notes if n.duration.quarterLength == 0]
    dropped += score.recurse().getElementsByClass((instrument.Instrument, tempo.MetronomeMark))
    score.remove(dropped, recurse=True)
    for part in score.parts:
        part.insert(0, instrument.PipeOrgan())  # GM program 20, Church Organ
    score.parts[0].insert(0, tempo.MetronomeMark(number=TEMPO_BPM))
    partial = midi.with_name(f".{midi.name}.part.mid")
    score.write("midi", fp=partial)
    os.replace(partial, midi)


def _render(fluidsynth: str, soundfont: Path, midi: Path, wav: Path) -> None:
    """Render `midi` to `wav` (16-bit stereo at SAMPLE_RATE); RuntimeError with fluidsynth's message on failure."""
    partial = wav.with_name(f".{wav.name}.part.wav")
    command = [fluidsynth, "-ni", "-q", "-R", "0", "-C", "0", "-g", str(GAIN), "-r", str(SAMPLE_RATE)]
    command += ["-F", str(partial), str(soundfont), str(midi)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=RENDER_TIMEOUT)
    except subprocess.TimeoutExpired:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"fluidsynth still rendering {midi} after {RENDER_TIMEOUT} s (a stuck note?)") from None
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"fluidsynth failed on {midi}: {(done.stderr or done.stdout).strip()}")
    os.replace(partial, wav)


def _make(work: str, midi: Path, wav: Path, fluidsynth: str, soundfont: Path, max_measures: int | None) -> str | None:
    """Write `midi` and `wav` for `work` unless they exist; None on success, else why it failed."""
    from music21.exceptions21 import Music21Exception

    try:
        if not midi.is_file():
            _write_midi(work, midi, max_measures)
        if not wav.is_file():
            _render(fluidsynth, soundfont, midi, wav)
    except (Music21Exception, RuntimeError) as err:
        return f"{work}: {err}"
    return None


def prepare(
    data_dir: Path,
    out_dir: Path,
    *,
    limit: int | None = None,
    max_measures: int | None = None,
    soundfont: str | os.PathLike | None = None,
    workers: int = 2,
) -> Path:
    """Render the chorales into `data_dir`, convert them into `out_dir`, return the manifest's path.

    `limit` keeps the first `limit` chorales (sorted by name) and `max_measures` the first
    measures of each: both are for quick trials, and files made under other settings are
    reused, so give such runs their own directories. `soundfont` defaults to the first of
    SOUNDFONTS present. Chorales run on `workers` processes. A chorale that music21 or
    fluidsynth cannot handle is skipped with a warning. Raises FileNotFoundError naming the
    Debian package for a missing fluidsynth or SoundFont, ModuleNotFoundError for music21.
    """
    if limit is not None and limit <= 0:
        raise ValueError(f"limit: must be positive (or None), got {limit}")
    if max_measures is not None and max_measures <= 0:
        raise ValueError(f"max_measures: must be positive (or None), got {max_measures}")
    fluidsynth = shutil.which("fluidsynth")
    if fluidsynth is None:
        raise FileNotFoundError("fluidsynth: command not found; install the Debian package fluidsynth")
    soundfont = _find_soundfont(soundfont)
    works = chorale_names()[:limit]
    names = [work.rsplit("/", 1)[-1] for work in works]
    midis = [data_dir / "midi" / f"{name}.mid" for name in names]
    renders = [data_dir / "rendered" / f"{name}.wav" for name in names]
    for folder in ("midi", "rendered"):
        (data_dir / folder).mkdir(parents=True, exist_ok=True)
    log.info("rendering %d chorales with %s into %s", len(works), soundfont, data_dir)
    n = len(works)
    with ProcessPoolExecutor(max(1, workers)) as pool:
        results = pool.map(_make, works, midis, renders, [fluidsynth] * n, [soundfont] * n, [max_measures] * n)
        failures = [failure for failure in results if failure is not None]
    for failure in failures:
        log.warning("skipping %s", failure)
    sources = [
        common.SourceFile(wav, name, None, common.hash_split(name, VALID_FRACTION, TEST_FRACTION))
        for name, wav in zip(names, renders)
        if wav.is_file()
    ]
    if not sources:
        raise ValueError(f"{data_dir}: none of the {n} chorales could be rendered (see the warnings above)")
    return common.convert(sources, out_dir, SAMPLE_RATE, workers=workers)
