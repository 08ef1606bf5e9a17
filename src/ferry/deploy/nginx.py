"""nginx in front of several proxy instances: the guide's `least_conn` upstream, made safe.

What each directive is for is said beside it in the file written, for the operator who
reads it there. The two choices that matter most:

- Retries. nginx never passes a POST to a second instance once it has sent any of it to
  a first (`non_idempotent` stays out of `proxy_next_upstream`): that instance may have
  stored the message and died before answering, and a second copy is a duplicate the
  client never asked for. Only a connection that failed before the request went out (the
  instance is down) is tried elsewhere. A client that gets 502/504 sends again with the
  same Idempotency-Key, which ferry turns into the first message's id: the one retry
  that cannot duplicate is the client's, since only it knows the key was sent before.
- Upstream keep-alive shorter than ferry's own (`FERRY_KEEP_ALIVE_SECONDS`): otherwise
  nginx may reuse a connection the instance is closing, and a POST lost on it could not
  be retried.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from pathlib import Path

from ferry.adapters.uvicorn import MAX_HEAD_BYTES
from ferry.settings import Settings

UPSTREAM = "ferry_proxies"
HEADER_BUFFER_BYTES = 8 * 1024  # nginx's own default size; the count makes up ferry's head cap
# Passive health checks: this many failed connections within FAIL_TIMEOUT mark an instance
# down for FAIL_TIMEOUT; then one request tries it again.
MAX_FAILS = 2
FAIL_TIMEOUT_SECONDS = 10
CONNECT_TIMEOUT_SECONDS = 2  # an instance that does not even accept within this is down
READ_TIMEOUT_SECONDS = 60  # strict durability waits for an fsync before 202; never this long
UPSTREAM_IDLE_CONNECTIONS = 32  # kept open to the instances, per nginx worker process
# Mozilla's "intermediate" TLS 1.2 ciphers (TLS 1.3's are not configurable this way).
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


@dataclass(frozen=True)
class NginxLayout:
    """`instances` proxies on `upstream_host`, ports `base_port`.., behind nginx on `listen`."""

    certfile: Path
    keyfile: Path
    upstream_ca: Path  # the CA that signed the instances' certificates
    instances: int = 3
    base_port: int = 8001
    upstream_host: str = "127.0.0.1"
    upstream_name: str = ""  # the name in the instances' certificates; "" means localhost or the host
    listen: str = "443"
    server_name: str = "_"

    @property
    def verified_name(self) -> str:
        """The name nginx checks the instances' certificates for (and sends as SNI)."""
        if self.upstream_name:
            return self.upstream_name
        try:
            loopback = ipaddress.ip_address(self.upstream_host).is_loopback
        except ValueError:
            return self.upstream_host  # a host name: the certificate names it
        return "localhost" if loopback else self.upstream_host


def _seconds(value: float) -> str:
    """A duration as nginx reads it, in whole milliseconds (nginx takes no fractions)."""
    return f"{max(1, math.floor(value * 1000))}ms"


def _json_error(status: int, code: str, detail: str, retry_after: bool = False) -> str:
    """A location answering what nginx itself refuses in ferry's JSON, as ferry would."""
    lines = [
        f"    location @{code} {{",
        "        default_type application/json;",
    ]
    if retry_after:
        lines.append('        add_header Retry-After 1 always;')
    if "'" in detail:
        raise ValueError("nginx's single-quoted string cannot hold an apostrophe")
    body = '{"error": "%s", "detail": "%s"}' % (code, detail)
    lines += [f"        return {status} '{body}';", "    }"]
    return "\n".join(lines)


def server_blocks(layout: NginxLayout, settings: Settings) -> str:
    """The upstream and server blocks: what goes in conf.d/ (inside nginx's http block)."""
    servers = "\n".join(
        f"    server {layout.upstream_host}:{layout.base_port + index} "
        f"max_fails={MAX_FAILS} fail_timeout={FAIL_TIMEOUT_SECONDS}s;"
        for index in range(layout.instances)
    )
    header_buffers = math.ceil(MAX_HEAD_BYTES / HEADER_BUFFER_BYTES)
    # An idle upstream connection is dropped by nginx before ferry would close it.
    upstream_idle = _seconds(settings.keep_alive_seconds * 0.75)
    return f"""\
# ferry: {layout.instances} proxy instances behind nginx (made by `ferry deploy nginx`).
# Run the instances with PROXY_PORT={layout.base_port}..{layout.base_port + layout.instances - 1} and
# FERRY_TRUSTED_PROXIES set to this nginx's address, so their logs name the real client.

upstream {UPSTREAM} {{
    # The guide's algorithm: the instance with the fewest requests in flight.
    least_conn;
    # Shared by nginx's worker processes: without it each counts its own requests in
    # flight and failures, and each must find a dead instance out for itself.
    zone {UPSTREAM} 64k;
    # Passive health checks only: open-source nginx has no active ones (that is NGINX
    # Plus's health_check). An instance whose connections fail {MAX_FAILS} times within
    # {FAIL_TIMEOUT_SECONDS} s is left out for {FAIL_TIMEOUT_SECONDS} s, then tried again with one request.
{servers}
    # Connections kept open to the instances (each nginx worker process keeps its own),
    # closed before the instances' own idle limit (FERRY_KEEP_ALIVE_SECONDS={settings.keep_alive_seconds:g})
    # so that nginx never sends a request on a connection an instance is closing.
    keepalive {UPSTREAM_IDLE_CONNECTIONS};
    keepalive_timeout {upstream_idle};
}}

server {{
    listen {layout.listen} ssl;
    server_name {layout.server_name};

    ssl_certificate {layout.certfile};
    ssl_certificate_key {layout.keyfile};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {TLS12_CIPHERS};
    ssl_prefer_server_ciphers off;
    ssl_session_cache shared:ferry_tls:10m;
    ssl_session_timeout 1d;
    ssl_session_tickets off;

    # As large as the proxy takes (FERRY_MAX_BODY_BYTES), and no slower than it allows
    # (FERRY_HEAD_TIMEOUT_SECONDS, FERRY_BODY_TIMEOUT_SECONDS): what nginx lets through,
    # the instances accept.
    client_max_body_size {settings.max_body_bytes};
    client_body_buffer_size 128k;
    client_header_timeout {_seconds(settings.head_timeout_seconds)};
    client_body_timeout {_seconds(settings.body_timeout_seconds)};
    # Request heads up to the proxy's cap ({MAX_HEAD_BYTES} bytes): {header_buffers} buffers of {HEADER_BUFFER_BYTES // 1024}k, a line at most {HEADER_BUFFER_BYTES // 1024}k.
    large_client_header_buffers {header_buffers} {HEADER_BUFFER_BYTES // 1024}k;

    # nginx's own refusals in ferry's JSON, with ferry's codes.
    error_page 413 @payload_too_large;
    error_page 414 494 =431 @headers_too_large;
    error_page 502 504 @upstream_unavailable;

    location / {{
        proxy_pass https://{UPSTREAM};

        # HTTPS to the instances, their certificates verified.
        proxy_ssl_protocols TLSv1.2 TLSv1.3;
        proxy_ssl_verify on;
        proxy_ssl_verify_depth 2;
        proxy_ssl_trusted_certificate {layout.upstream_ca};
        proxy_ssl_name {layout.verified_name};
        proxy_ssl_server_name on;
        proxy_ssl_session_reuse on;

        # Keep-alive to the instances: HTTP/1.1 and no "Connection: close" passed on.
        proxy_http_version 1.1;
        proxy_set_header Connection "";

        # The real client: the instances believe X-Forwarded-For from this nginx only
        # (FERRY_TRUSTED_PROXIES), and take the address nearest to it that no trusted
        # proxy added, so a client's own X-Forwarded-For changes nothing.
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;

        # Retries: only a connection that failed, or timed out, before any of the request
        # was sent goes to another instance. nginx never retries a POST once it has sent it
        # (non_idempotent is left out on purpose): the first instance may have stored the
        # message before failing, and a 502 after the request went out is that case. A
        # client answered 502/504 sends again with its Idempotency-Key, which stores nothing
        # twice. ferry's own 503s are passed on: every instance shares the one Redis.
        proxy_next_upstream error timeout;
        proxy_next_upstream_tries {layout.instances};
        proxy_next_upstream_timeout {FAIL_TIMEOUT_SECONDS}s;
        proxy_connect_timeout {CONNECT_TIMEOUT_SECONDS}s;
        proxy_send_timeout {_seconds(settings.body_timeout_seconds)};
        proxy_read_timeout {READ_TIMEOUT_SECONDS}s;
    }}

{_json_error(413, "payload_too_large", f"the body is over {settings.max_body_bytes} bytes")}

{_json_error(431, "headers_too_large", f"the request header fields are over {MAX_HEAD_BYTES} bytes")}

{_json_error(502, "upstream_unavailable", "no proxy instance answered; the message may be stored: send it again with the same Idempotency-Key", retry_after=True)}
}}
"""


def standalone_conf(layout: NginxLayout, settings: Settings, directory: Path) -> str:
    """A whole nginx.conf that runs with `nginx -p DIR -c DIR/nginx.conf`, unprivileged:
    its pid file, temporary files and logs all inside `directory`."""
    root = directory.resolve()
    temp = root / "temp"
    return f"""\
# A whole nginx.conf for ferry (made by `ferry deploy nginx --standalone {root}`).
# Run it as any user:  nginx -p {root} -c {root}/nginx.conf -e {root}/logs/error.log
# (-e keeps nginx from opening its system error log before it reads this file).
worker_processes auto;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    log_format ferry '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                     'upstream=$upstream_addr upstream_status=$upstream_status '
                     'request_time=$request_time upstream_time=$upstream_response_time';
    access_log {root}/logs/access.log ferry;
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server_tokens off;

{_indent(server_blocks(layout, settings))}
}}
"""


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" if line else line for line in text.splitlines())


def write_standalone(layout: NginxLayout, settings: Settings, directory: Path) -> Path:
    """nginx.conf in `directory`, with the logs and temp folders nginx expects there."""
    for sub in ("logs", "temp"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    path = directory / "nginx.conf"
    path.write_text(standalone_conf(layout, settings, directory))
    return path
