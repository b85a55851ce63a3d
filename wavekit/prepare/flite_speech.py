"""The `flite-speech` recipe: a four-speaker English corpus synthesized offline with Debian's
`flite` (voices slt, awb, rms, kal16), from sentences generated here deterministically from
a seed. The default size is about 48 minutes of 16 kHz speech.

    wavekit prepare flite-speech        # needs: apt-get install flite
"""

from __future__ import annotations

import logging
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wavekit.prepare.common import SourceFile, convert, hash_split

__all__ = ["VOICES", "SAMPLE_RATE", "sentences", "prepare"]

log = logging.getLogger("wavekit.prepare")

VOICES = ("awb", "kal16", "rms", "slt")
SAMPLE_RATE = 16000
FLITE_TIMEOUT = 60  # seconds for one sentence; flite speaks one in well under a second

_ADJECTIVES = (
    "quiet bright heavy narrow ancient gentle curious silver wooden distant sudden careful "
    "golden hollow restless patient crowded humble frozen sharp honest rapid shallow broken"
).split()
_NOUNS = (
    "river teacher garden engine window harbor village pianist doctor basket mountain lantern "
    "captain library sparrow kitchen painter valley carpet student bridge orchard sailor market"
).split()
_VERBS = (
    "carried painted followed watched repaired opened visited measured described borrowed "
    "noticed crossed gathered answered polished counted"
).split()
_PLACES = (
    "behind the old station|across the frozen lake|near the northern gate|under a gray sky|"
    "beside the crowded square|inside the small museum|along the winding road|above the quiet town"
).split("|")
_TIMES = (
    "early this morning|late last night|every other Tuesday|in the spring of nineteen sixty|"
    "just before dinner|after the long meeting|at a quarter past nine|during the summer storm"
).split("|")


def _capitalized(text: str) -> str:
    return text[0].upper() + text[1:]


def _sentence(rng: random.Random) -> str:
    """One sentence from a handful of templates; statements, questions and numbers."""
    a, n, v = rng.choice, rng.choice, rng.choice
    number = rng.randint(2, 999)
    templates = (
        f"The {a(_ADJECTIVES)} {n(_NOUNS)} {v(_VERBS)} the {a(_ADJECTIVES)} {n(_NOUNS)} {rng.choice(_PLACES)}.",
        f"{_capitalized(rng.choice(_TIMES))}, a {a(_ADJECTIVES)} {n(_NOUNS)} {v(_VERBS)} {number} {n(_NOUNS)}s.",
        f"Why has the {n(_NOUNS)} {v(_VERBS)} the {a(_ADJECTIVES)} {n(_NOUNS)} {rng.choice(_TIMES)}?",
        f"We {v(_VERBS)} the {n(_NOUNS)} {rng.choice(_PLACES)}, and the {n(_NOUNS)} {v(_VERBS)} it again.",
        f"Only {number} {a(_ADJECTIVES)} {n(_NOUNS)}s were {v(_VERBS)} {rng.choice(_TIMES)}.",
    )
    return rng.choice(templates)


def sentences(count: int, seed: int = 0) -> list[str]:
    """`count` sentences, the same for the same seed on every machine."""
    rng = random.Random(seed)
    return [_sentence(rng) for _ in range(count)]


def _check_voices(flite: str) -> None:
    """ChildProcessError unless `flite` has every voice of VOICES (it would fall back to its default one)."""
    try:
        listed = subprocess.run([flite, "-lv"], capture_output=True, text=True, timeout=FLITE_TIMEOUT).stdout
    except (subprocess.TimeoutExpired, OSError) as err:
        raise ChildProcessError(f"flite-speech: {flite} -lv did not list its voices ({err})") from None
    have = set(listed.partition(":")[2].split())
    if missing := [v for v in VOICES if v not in have]:
        lacks = ", ".join(missing)
        raise ChildProcessError(f"flite-speech: {flite} lacks the voice(s) {lacks} (it lists: {listed.strip()})")


def _synthesize(flite: str, voice: str, text: str, wav: Path) -> None:
    """Speak `text` with `voice` into `wav` (written once: an existing file is kept).

    ChildProcessError with flite's message if it fails or hangs.
    """
    if wav.is_file():
        return
    partial = wav.with_name(f".{wav.name}.part.wav")
    command = [flite, "-voice", voice, "-t", text, "-o", str(partial)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=FLITE_TIMEOUT)
    except subprocess.TimeoutExpired:
        done = None
    if done is None or done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        why = f"no answer after {FLITE_TIMEOUT} s" if done is None else (done.stderr or done.stdout).strip()
        raise ChildProcessError(f"flite-speech: flite failed on {wav.name} ({voice}): {why}")
    partial.replace(wav)


def prepare(data_dir: Path, out_dir: Path, *, sentences_per_voice: int = 160, seed: int = 0) -> Path:
    """Synthesize the corpus into `data_dir` (raw flite output, kept) and convert it into `out_dir`.

    Voice k reads sentences k, k + 4, k + 8, ... so no two speakers share a text. The split is
    a hash of the utterance name: about 4% valid and 2% test.
    """
    flite = shutil.which("flite")
    if flite is None:
        raise FileNotFoundError("flite-speech: the `flite` program is missing; install it with `apt-get install flite`")
    _check_voices(flite)
    texts = sentences(sentences_per_voice * len(VOICES), seed)
    jobs, sources = [], []
    for k, voice in enumerate(VOICES):
        (data_dir / voice).mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(texts[k :: len(VOICES)]):
            name = f"{voice}/{voice}_{i:04d}"
            wav = data_dir / f"{name}.wav"
            jobs.append((voice, text, wav))
            sources.append(SourceFile(wav, name, voice, hash_split(name, valid_fraction=0.04, test_fraction=0.02)))
    (data_dir / "sentences.txt").write_text("".join(f"{s.name}\t{t}\n" for s, (_, t, _) in zip(sources, jobs)))
    log.info("flite-speech: synthesizing %d utterances into %s", len(jobs), data_dir)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(_synthesize, flite, *job) for job in jobs]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)  # one failure: the rest would fail alike
            raise
    return convert(sources, out_dir, SAMPLE_RATE)
