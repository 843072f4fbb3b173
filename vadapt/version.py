"""vadapt's version, importable by the core without the package root (whose lazy ``vadapt.infer`` sits above)."""

__version__ = "0.1.0"
