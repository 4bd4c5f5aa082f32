"""gridctl controller: the real-time runtime and its command-line interface."""

__version__ = "0.1.0"
