"""Test certificates made by trustme: one CA, a server and a client certificate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class CertFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


def make_certs(directory: Path) -> CertFiles:
    """PEM files: a CA, a localhost server cert, a client cert, and a client cert of an unknown CA."""
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("ferry-worker@example.test")
    other_ca = trustme.CA()
    stranger = other_ca.issue_cert("stranger@example.test")

    def write(name: str, blob: trustme.Blob) -> Path:
        path = directory / name
        blob.write_to_path(str(path))
        return path

    return CertFiles(
        ca=write("ca.pem", ca.cert_pem),
        server_cert=write("server.pem", server.cert_chain_pems[0]),
        server_key=write("server.key", server.private_key_pem),
        client_cert=write("client.pem", client.cert_chain_pems[0]),
        client_key=write("client.key", client.private_key_pem),
        other_ca=write("other-ca.pem", other_ca.cert_pem),
        other_client_cert=write("stranger.pem", stranger.cert_chain_pems[0]),
        other_client_key=write("stranger.key", stranger.private_key_pem),
    )
