"""The library's version and start time, in a module of their own so that any module can import them
without importing the package's API (and with it everything else: an import cycle)."""
import time as _time

__version__ = "0.1.0"
STARTED = _time.perf_counter()  # when imgclass was imported: `imgclass train --time-budget` counts from here
