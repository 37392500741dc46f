"""The package version (one place; ldd_fast and its export metadata read it)."""
__version__ = "0.1.0"
