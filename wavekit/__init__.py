"""wavekit: WaveNet audio synthesis — the model, fast queued generation and training."""

from wavekit.generation import generate, stream
from wavekit.model import WaveNet, WaveNetConfig

__all__ = ["WaveNet", "WaveNetConfig", "generate", "stream"]
__version__ = "0.1.0"
