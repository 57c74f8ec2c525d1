"""The one base class of mistakes a user can fix.

Dependency-free so that the CLI can catch every user error without importing
torch or the engine: an exception of this kind carries a message that names the
file, field or value and what to do, and is printed as one paragraph; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a situation the user can act on; ``str(exc)`` is the whole message."""
