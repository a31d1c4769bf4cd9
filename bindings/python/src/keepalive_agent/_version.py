"""The package version; the library's major.minor must match it (checked at import)."""

__version__ = "0.1.0"
