"""The package version, written into every file the package produces."""
__version__ = "0.1.0"
