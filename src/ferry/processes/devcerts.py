"""A development CA and a localhost certificate for `ferry up`, made once in FERRY_HOME."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class DevTls:
    ca_file: Path
    cert_file: Path
    key_file: Path


def dev_tls(home: Path) -> DevTls:
    """Where `ferry up` keeps them; clients (`ferry send`) trust that CA by default."""
    directory = (home / "tls").resolve()
    return DevTls(directory / "ca.pem", directory / "server.pem", directory / "server.key")


def ensure_dev_tls(home: Path) -> DevTls:
    """Reuse FERRY_HOME/tls if it is there, so a client that trusts the CA keeps trusting it."""
    tls = dev_tls(home)
    directory = tls.ca_file.parent
    if all(path.is_file() for path in (tls.ca_file, tls.cert_file, tls.key_file)):
        return tls
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="ferry development CA")
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    ca.cert_pem.write_to_path(str(tls.ca_file))
    server.cert_chain_pems[0].write_to_path(str(tls.cert_file))
    server.private_key_pem.write_to_path(str(tls.key_file))
    os.chmod(tls.key_file, 0o600)
    return tls
