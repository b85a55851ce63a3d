"""wavekit: WaveNet audio synthesis — the model, fast queued generation and training."""

from wavekit.generation import generate, stream
from wavekit.hub import load
from wavekit.model import WaveNet, WaveNetConfig

__all__ = ["WaveNet", "WaveNetConfig", "generate", "load", "stream"]
__version__ = "0.1.0"
