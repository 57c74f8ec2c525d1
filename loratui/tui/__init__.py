"""The terminal interface. Nothing under this package imports torch at module level:
the first screen must draw at once; the engine and its libraries load in a worker."""

from __future__ import annotations
