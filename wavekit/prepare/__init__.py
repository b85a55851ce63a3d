"""`wavekit prepare <recipe>`: turn a corpus into 16-bit WAVs plus a JSONL manifest.

Each recipe is a module here with a ``prepare(data_dir: Path, out_dir: Path) -> Path``
function that fetches the corpus into `data_dir` (skipping what is already there),
converts it into `out_dir` and returns the manifest's path. Running it again redoes
nothing that is done.
"""

from __future__ import annotations

import importlib
from pathlib import Path

__all__ = ["RECIPES", "prepare"]

RECIPES = ("ljspeech", "vctk", "maestro", "nsynth", "flite-speech", "bach-chorales")


def prepare(recipe: str, data_dir: str | Path | None = None, out_dir: str | Path | None = None) -> Path:
    """Prepare `recipe`'s corpus; defaults: `out_dir` data/<recipe>, `data_dir` <out_dir>/source."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe: unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    out = Path(out_dir) if out_dir is not None else Path("data") / recipe
    source = Path(data_dir) if data_dir is not None else out / "source"
    module = importlib.import_module(f"wavekit.prepare.{recipe.replace('-', '_')}")
    return module.prepare(source, out)
