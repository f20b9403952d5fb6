"""ptmpack: the GB/T 42382.2 chapter-8 model container, as a library and a CLI."""

__version__ = "0.1.0"
