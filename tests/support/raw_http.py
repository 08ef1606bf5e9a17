"""Raw HTTP/1.1 exchanges with a server, for the tests that must write bytes as they are."""

from __future__ import annotations

import socket


def answered_with_close(received: bytes) -> bool:
    """Whether `received` ends with a whole answer that says `connection: close`, after which a
    server sends nothing more (the answers before it are whole too: HTTP/1.1 answers in order)."""
    rest = received
    while rest:
        head, separator, after = rest.partition(b"\r\n\r\n")
        if not separator:
            return False
        fields = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        }
        length = int(fields.get(b"content-length", b"0"))
        if len(after) < length:
            return False
        rest = after[length:]
        if fields.get(b"connection", b"").lower() == b"close":
            return not rest
    return False


def read_to_close(sock: socket.socket, *, ends: tuple[type[OSError], ...] = ()) -> bytes:
    """All the server sends on `sock` (TLS or not) until it closes, or one of `ends` (a
    reset, a read timeout) ends the reading: what came before is returned. Once it answered
    with `connection: close`, this side half-closes: a server that lingers to let the
    client read its answer (ferry's proxy, 2 s) ends at once; anything it sent after that
    answer is still read and returned."""
    received = b""
    half_closed = False
    try:
        while chunk := sock.recv(65536):
            received += chunk
            if not half_closed and answered_with_close(received):
                _half_close(sock)
                half_closed = True
    except ends:
        pass
    return received


def _half_close(sock: socket.socket) -> None:
    """FIN to the server. SSLSocket.shutdown would drop the TLS state, so the shutdown goes
    through a duplicate of the descriptor: the socket is shared, the TLS object kept."""
    with socket.socket(fileno=socket.dup(sock.fileno())) as duplicate:
        duplicate.shutdown(socket.SHUT_WR)
