"""One resolver for every way a model arrives: `load` takes a Lightning training checkpoint,
an exported model file or the name of a bundled model, and returns an eval-mode `WaveNet`
whose config carries the sample rate, speaker names and conditioning settings. `export`
writes a checkpoint's inference form. Nothing is unpickled: checkpoints are read with
``torch.load(weights_only=True)`` and model files are safetensors with a JSON config.

    model = wavekit.load("default")                             # bundled with the package
    model = wavekit.load("runs/flite-speech/checkpoints/last.ckpt")
    wavekit.hub.export("last.ckpt", "voice.safetensors")        # EMA weights + config
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from wavekit.checks import usable_device
from wavekit.model import WaveNet, WaveNetConfig

__all__ = ["BUNDLED", "load", "export", "read_checkpoint"]

MODELS_DIR = Path(__file__).parent / "models"
BUNDLED = {"default": "flite-speech: 4 speakers, mel-conditioned, 16 kHz (recipes/flite-speech)"}


def _is_zip(path: str) -> bool:
    """Whether `path` starts like a zip archive, as everything torch.save writes does."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _load_failure(err: Exception) -> str:
    """The gist of a torch.load error: the unpickler's own complaint when weights-only loading
    refused something (not the advice around it), else the first 160 characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    refused = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: Please use|\n|$)", text)
    if refused:
        return f"it holds something other than tensors and plain data: {refused.group(1)}"
    return " ".join(text.split())[:160] or type(err).__name__


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict, WaveNetConfig]:
    """The contents of a `WaveNetModule` training checkpoint and its model config.

    Loaded with `weights_only=True` (no arbitrary unpickling); ValueError naming `path` for
    anything that is not such a checkpoint.
    """
    path = os.fspath(path)
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # arbitrary bytes make torch.load raise almost anything
        raise ValueError(f"{path}: not a readable training checkpoint ({_load_failure(err)})") from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: not a wavekit training checkpoint (it holds a {type(checkpoint).__name__})")
    try:
        return checkpoint, WaveNetConfig.from_dict(checkpoint["hyper_parameters"]["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a wavekit training checkpoint (no model config: {err!s:.200})") from err


def _from_checkpoint(path: str, device: str | torch.device) -> WaveNet:
    """The network of a `WaveNetModule` checkpoint: its "state_dict" (the EMA weights when
    trained with `EMA`) and the model config from its hyper-parameters."""
    checkpoint, config = read_checkpoint(path, device)
    try:
        state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        model = WaveNet(config)
        model.load_state_dict(state)
    except (KeyError, AttributeError, RuntimeError) as err:
        raise ValueError(f"{path}: not a wavekit training checkpoint ({err!s:.200})") from err
    return model.to(device).eval()


def load(source: str | os.PathLike, device: str | torch.device = "cpu") -> WaveNet:
    """The model at `source`: a bundled name (see `BUNDLED`), a training checkpoint (``.ckpt``,
    or any name: its content tells), or a model file written by `WaveNet.save` / `export`.
    Raises FileNotFoundError for a missing file, and ValueError naming the file for one that
    is not a wavekit model or naming `device` if that is not usable here."""
    name = os.fspath(source)
    device = usable_device("device", device)
    if name in BUNDLED:
        path = MODELS_DIR / f"{name}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"bundled model {name!r} is missing from the installation ({path})")
        return WaveNet.from_file(path, map_location=device)
    if not os.path.isfile(name):
        known = ", ".join(BUNDLED)
        raise FileNotFoundError(f"{name}: no such model file (bundled models: {known})")
    if name.endswith(".ckpt") or _is_zip(name):  # torch.save writes zip archives, whatever the name
        return _from_checkpoint(name, device)
    return WaveNet.from_file(name, map_location=device)


def export(source: str | os.PathLike, out: str | os.PathLike) -> WaveNet:
    """Write the inference form of `source` (any `load` source) to `out`; returns the model."""
    model = load(source)
    model.save(out)
    return model
