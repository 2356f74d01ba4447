"""The package version: one place, read by the package and by the reports that record it."""

__version__ = "0.1.0"
