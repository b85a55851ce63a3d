"""`wavekit prepare maestro`: MAESTRO v3.0.0 (1,276 piano performances, about 199 h of
44.1/48 kHz stereo 16-bit WAV; a 101 GB zip, 120 GB unpacked) as 16 kHz mono 16-bit WAVs
plus a manifest, for an unconditional piano model.

Layout after extraction: ``maestro-v3.0.0/maestro-v3.0.0.csv`` (columns canonical_composer,
canonical_title, split, year, midi_filename, audio_filename, duration) and
``maestro-v3.0.0/<year>/<name>.wav``. The official split is kept ("validation" -> "valid"),
so no composition appears in two splits.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path, PurePosixPath

from wavekit.prepare.common import SourceFile, convert, fetch

__all__ = ["URL", "SHA256", "SAMPLE_RATE", "SPLITS", "sources", "prepare"]

URL = "https://storage.googleapis.com/magentadata/datasets/maestro/v3.0.0/maestro-v3.0.0.zip"
SHA256 = "6680fea5be2339ea15091a249fbd70e49551246ddbd5ca50f1b2352c08c95291"  # published on the MAESTRO page
ROOT = "maestro-v3.0.0"
METADATA = "maestro-v3.0.0.csv"
SAMPLE_RATE = 16000
SPLITS = {"train": "train", "validation": "valid", "test": "test"}  # MAESTRO's name -> manifest split
# A performance can last tens of minutes (30 min of 48 kHz stereo is ~700 MB as float32
# while it is converted), so fewer threads than for short clips.
WORKERS = 4


def _fetch(data_dir: Path) -> Path:
    """`data_dir`/maestro-v3.0.0, downloaded and unpacked first unless it is there already."""
    root = data_dir / ROOT
    fetch("MAESTRO v3.0.0", URL, data_dir / URL.rsplit("/", 1)[1], data_dir, root / METADATA, sha256=SHA256)
    return root


def sources(root: Path) -> list[SourceFile]:
    """One `SourceFile` per row of `root`/maestro-v3.0.0.csv, named by its audio_filename
    without the suffix (``<year>/<name>``), speaker None, split from the official one.

    Raises ValueError naming the file (and line) for missing columns, an unknown split or an
    audio_filename that leaves the corpus folder.
    """
    metadata = root / METADATA
    found = []
    with open(metadata, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if missing := sorted({"split", "audio_filename"} - set(reader.fieldnames or ())):
            raise ValueError(f"{metadata}: missing column(s) {', '.join(missing)}")
        for row in reader:
            where = f"{metadata}:{reader.line_num}"
            if row["split"] not in SPLITS:
                raise ValueError(f"{where}: split must be one of {', '.join(SPLITS)}, got {row['split']!r}")
            name = PurePosixPath(row["audio_filename"] or "")
            if name.suffix.lower() != ".wav" or name.is_absolute() or ".." in name.parts:
                raise ValueError(f"{where}: audio_filename must be a relative .wav path, got {str(name)!r}")
            found.append(SourceFile(root / name, name.with_suffix("").as_posix(), None, SPLITS[row["split"]]))
    return found


def prepare(data_dir: Path, out_dir: Path) -> Path:
    """Fetch MAESTRO into `data_dir` unless there, convert it into `out_dir` at 16 kHz; returns the manifest."""
    files = sources(_fetch(data_dir))
    return convert(files, out_dir, SAMPLE_RATE, workers=min(WORKERS, os.cpu_count() or 2))
