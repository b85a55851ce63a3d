"""`wavekit prepare vctk`: CSTR VCTK 0.92 (110 English speakers, about 44 h, 48 kHz FLAC)
as 24 kHz 16-bit WAVs plus a manifest with speakers, for a mel- and speaker-conditioned vocoder.

The zip has no top folder; like torchaudio's VCTK_092 it is unpacked into
``VCTK-Corpus-0.92/``: ``wav48_silence_trimmed/<spk>/<spk>_<nnn>_mic{1,2}.flac``,
``txt/<spk>/<spk>_<nnn>.txt`` and ``speaker-info.txt``. Only the audio is used, so p315
(no transcripts) is kept; mic1 (the omni DPA 4035) is the default, and VCTK 0.92 has no
mic2 audio for p280 and p315 and lacks some files of p362. Split: `hash_split` on the
utterance id, 1% "valid" and 1% "test", so every speaker appears in every split.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from wavekit.prepare.common import SourceFile, convert, fetch, hash_split

__all__ = ["URL", "SHA256", "SAMPLE_RATE", "SPEAKERS", "sources", "prepare"]

log = logging.getLogger("wavekit.prepare")

URL = "https://datashare.ed.ac.uk/bitstream/handle/10283/3443/VCTK-Corpus-0.92.zip"
SHA256 = "f96258be9fdc2cbff6559541aae7ea4f59df3fcaf5cf963aae5ca647357e359c"  # as in torchaudio.datasets.VCTK_092
ROOT = "VCTK-Corpus-0.92"
AUDIO = "wav48_silence_trimmed"
MICS = ("mic1", "mic2")
SAMPLE_RATE = 24000
VALID_FRACTION = 0.01
TEST_FRACTION = 0.01
# The speaker table (sorted): the 110 speakers of VCTK 0.92; a speaker id is its index here.
SPEAKERS = tuple(
    [f"p{n}" for n in (
        225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 236, 237, 238, 239, 240, 241, 243, 244,
        245, 246, 247, 248, 249, 250, 251, 252, 253, 254, 255, 256, 257, 258, 259, 260, 261, 262,
        263, 264, 265, 266, 267, 268, 269, 270, 271, 272, 273, 274, 275, 276, 277, 278, 279, 280,
        281, 282, 283, 284, 285, 286, 287, 288, 292, 293, 294, 295, 297, 298, 299, 300, 301, 302,
        303, 304, 305, 306, 307, 308, 310, 311, 312, 313, 314, 315, 316, 317, 318, 323, 326, 329,
        330, 333, 334, 335, 336, 339, 340, 341, 343, 345, 347, 351, 360, 361, 362, 363, 364, 374,
        376,
    )] + ["s5"]
)  # fmt: skip


def _fetch(data_dir: Path) -> Path:
    """`data_dir`/VCTK-Corpus-0.92, downloaded and unpacked first unless it is there already."""
    root = data_dir / ROOT
    fetch("VCTK 0.92", URL, data_dir / URL.rsplit("/", 1)[1], root, root / AUDIO, sha256=SHA256)
    return root


def _check_mic(mic: str) -> None:
    if mic not in MICS:
        raise ValueError(f"mic: expected one of {', '.join(MICS)}, got {mic!r}")


def sources(root: Path, mic: str = "mic1") -> list[SourceFile]:
    """One `SourceFile` per `mic` recording under `root`/wav48_silence_trimmed, named
    ``<speaker>/<utterance>``, its speaker the folder's name.

    Folders that are not VCTK 0.92 speakers are skipped with a warning, and speakers with
    no recording for `mic` are named in one warning. Raises ValueError for an unknown `mic`.
    """
    _check_mic(mic)
    suffix = f"_{mic}.flac"
    found = []
    for folder in sorted(path for path in (root / AUDIO).iterdir() if path.is_dir()):
        if folder.name not in SPEAKERS:
            log.warning("skipping %s: not a VCTK 0.92 speaker", folder)
            continue
        for path in sorted(folder.glob(f"*{suffix}")):
            utterance = path.name.removesuffix(suffix)
            split = hash_split(utterance, VALID_FRACTION, TEST_FRACTION)
            found.append(SourceFile(path, f"{folder.name}/{utterance}", folder.name, split))
    if missing := sorted(set(SPEAKERS) - {s.speaker for s in found}):
        log.warning("no %s recordings for speaker(s) %s in %s", mic, ", ".join(missing), root / AUDIO)
    return found


def prepare(data_dir: Path, out_dir: Path, *, mic: str = "mic1") -> Path:
    """Fetch VCTK 0.92 into `data_dir` unless there, convert its `mic` recordings into
    `out_dir` at 24 kHz; returns the manifest."""
    _check_mic(mic)  # before a long download
    files = sources(_fetch(data_dir), mic)
    return convert(files, out_dir, SAMPLE_RATE, workers=os.cpu_count() or 2)
