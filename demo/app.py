"""Serve the wavekit demo from a checkout: ``python demo/app.py [--checkpoint SRC] [--host H] [--port N]``.

The app itself is `wavekit.demo`; this file is the conventional entry point of a hosted
demo and does what `wavekit demo` does.
"""

import sys

from wavekit.cli import main

if __name__ == "__main__":
    main(["demo", *sys.argv[1:]])
