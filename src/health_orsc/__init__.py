"""health-orsc: build, validate, version and audit Health-ORSC-Bench-style benchmarks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("health-orsc")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
