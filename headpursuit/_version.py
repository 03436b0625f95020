"""The package version: one place, read by pyproject.toml (setuptools dynamic version) and `headpursuit.__version__`."""

__version__ = "0.2.0"
