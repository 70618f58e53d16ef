"""The package version, in its own module so that any module can read it without
importing the package's `__init__` (which imports every module)."""

__version__ = "0.1.0"
