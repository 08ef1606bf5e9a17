"""The proxy over real HTTPS against a real Redis/Valkey: every route and every error.

Tests that only send requests share a proxy (`shared_proxy`: one per module for
each set of settings that more than one test uses); a test with settings of its
own, or one that kills the server, rewrites the proxy's files or reads its
counters from zero, starts its own (`start_proxy`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import ssl
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.certs import CertFiles
from tests.support.inspect import client, queue_length, scrape_text
from tests.support.processes import Proxy, bare_env, ferry_command, wait_until
from tests.support.raw_http import read_to_close
from tests.support.servers import RedisProcess, free_port

StartProxy = Callable[..., Proxy]


def stored(redis_url: str, message_id: str) -> dict[bytes, bytes]:
    return client(redis_url).hgetall(f"{{message_queue}}:msg:{message_id}")  # type: ignore[return-value]


def test_message_is_stored_byte_for_byte_and_answered_202(redis_url: str, shared_proxy: StartProxy) -> None:
    proxy = shared_proxy(redis_url)
    body = bytes(range(256)) * 3  # not UTF-8
    status, _, answer = proxy.post(body, "image/x-test; charset=binary")
    assert status == 202 and answer["status"] == "queued"
    fields = stored(redis_url, answer["id"])
    assert fields[b"body"] == body and fields[b"content_type"] == b"image/x-test; charset=binary"
    assert client(redis_url).lrange("message_queue", 0, -1) == [answer["id"].encode()]


def test_ids_are_uuid7_and_sort_by_arrival(redis_url: str, shared_proxy: StartProxy) -> None:
    proxy = shared_proxy(redis_url)
    ids = [proxy.post(b"{}")[2]["id"] for _ in range(5)]
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert ids == sorted(ids)


def test_empty_body_and_missing_content_type_are_kept(redis_url: str, shared_proxy: StartProxy) -> None:
    proxy = shared_proxy(redis_url)
    status, _, answer = proxy.request("POST", "/api/v1/messages", b"")
    assert status == 202
    fields = stored(redis_url, answer["id"])
    assert fields[b"body"] == b"" and fields[b"content_type"] == b"application/octet-stream"


def test_status_route_tells_where_a_message_is(redis_url: str, shared_proxy: StartProxy) -> None:
    proxy = shared_proxy(redis_url)
    message_id = proxy.post(b'{"a": 1}')[2]["id"]
    status, _, answer = proxy.request("GET", f"/api/v1/messages/{message_id}")
    assert status == 200
    assert (answer["id"], answer["status"], answer["attempts"]) == (message_id, "queued", 0)
    assert answer["created_at"].endswith("+00:00") and answer["delivered_at"] is None

    status, _, answer = proxy.request("GET", f"/api/v1/messages/{uuid.uuid4()}")
    assert (status, answer["error"]) == (404, "not_found")
    assert proxy.request("GET", f"/api/v1/messages/{message_id}", key=None)[0] == 401


def test_idempotency_key_repeat_answers_first_id_with_200_and_enqueues_nothing(
    redis_url: str, shared_proxy: StartProxy
) -> None:
    proxy = shared_proxy(redis_url)
    first = proxy.post(b'{"order": 7}', Idempotency_Key="order-7")
    repeat = proxy.post(b'{"order": 7}', Idempotency_Key="order-7")
    other = proxy.post(b'{"order": 8}', Idempotency_Key="order-8")
    assert (first[0], repeat[0], other[0]) == (202, 200, 202)
    assert repeat[2] == {"id": first[2]["id"], "status": "existing", "message_status": "queued"}
    assert queue_length(redis_url) == 2


def test_bad_idempotency_key_is_422_and_changes_nothing(redis_url: str, shared_proxy: StartProxy) -> None:
    proxy = shared_proxy(redis_url)
    status, _, answer = proxy.post(b"{}", Idempotency_Key="x" * 256)
    assert (status, answer["error"]) == (422, "invalid_request")
    assert queue_length(redis_url) == 0


def test_missing_or_wrong_key_gets_401_that_tells_nothing_more(redis_url: str, shared_proxy: StartProxy) -> None:
    proxy = shared_proxy(redis_url)
    answers = [
        proxy.request("POST", "/api/v1/messages", b"{}", key=None),
        proxy.request("POST", "/api/v1/messages", b"{}", key="test-kex"),
        proxy.request("POST", "/api/v1/messages", b"{}", {"Authorization": "Basic dGVzdC1rZXk="}, key=None),
        proxy.request("POST", "/api/v1/messages/batch", b"{}", key="nope"),
    ]
    assert {status for status, _, _ in answers} == {401}
    assert {json.dumps(body) for _, _, body in answers} == {
        json.dumps({"error": "unauthorized", "detail": "a valid API key is required"})
    }
    assert queue_length(redis_url) == 0


def test_keys_file_holds_only_hashes(redis_url: str, start_proxy: StartProxy, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# ops team\n{hashlib.sha256(b'file-key').hexdigest()}\n")
    proxy = start_proxy(redis_url, FERRY_API_KEYS="", FERRY_API_KEYS_FILE=keys_file)
    assert proxy.request("POST", "/api/v1/messages", b"{}", key="file-key")[0] == 202
    assert proxy.request("POST", "/api/v1/messages", b"{}", key=hashlib.sha256(b"file-key").hexdigest())[0] == 401

    keys_file.write_text("file-key\n")  # a plain key where a hash belongs
    refused = subprocess.run(
        [ferry_command(), "proxy", "--port", str(free_port())],
        env=bare_env(REDIS_URL=redis_url, FERRY_API_KEYS_FILE=str(keys_file)),
        capture_output=True, text=True, timeout=30,
    )
    assert refused.returncode == 2 and "not a SHA-256 hex digest" in refused.stderr


def test_proxy_without_api_keys_refuses_to_start(redis_url: str) -> None:
    refused = subprocess.run(
        [ferry_command(), "proxy", "--port", str(free_port())],
        env=bare_env(REDIS_URL=redis_url),
        capture_output=True, text=True, timeout=30,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip() == "ferry: no API keys: set FERRY_API_KEYS or FERRY_API_KEYS_FILE"


def test_a_2_gb_upload_is_refused_with_413_without_being_read(
    redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    proxy = shared_proxy(redis_url, FERRY_MAX_BODY_BYTES=1000)
    context = ssl.create_default_context(cafile=str(certs.ca))
    with socket.create_connection(("localhost", proxy.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(
                b"POST /api/v1/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer test-key\r\n"
                b"Content-Type: application/octet-stream\r\nContent-Length: 2000000000\r\n\r\n"
                + b"x" * 4096
            )
            answer = b""
            while b"payload_too_large" not in answer:  # arrives though 1,999,995,904 bytes never came
                chunk = tls.recv(4096)
                assert chunk, answer
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 413")
    assert queue_length(redis_url) == 0


def test_a_chunked_body_past_the_cap_is_refused_as_it_streams(redis_url: str, shared_proxy: StartProxy) -> None:
    proxy = shared_proxy(redis_url, FERRY_MAX_BODY_BYTES=1000)

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"y" * 500

    # http.client sends an iterable without a length as Transfer-Encoding: chunked.
    status, _, answer = proxy.request("POST", "/api/v1/messages", chunks())  # type: ignore[arg-type]
    assert (status, answer["error"]) == (413, "payload_too_large")
    assert proxy.post(b"z" * 1000)[0] == 202  # exactly the cap is fine
    assert queue_length(redis_url) == 1


def raw_exchange(proxy: Proxy, certs: CertFiles, *sends: bytes, pause: float = 0.0) -> bytes:
    """Bytes written as given on one TLS connection (pausing between sends), and all read till the proxy closes."""
    context = ssl.create_default_context(cafile=str(certs.ca))
    with socket.create_connection(("localhost", proxy.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            for data in sends:
                tls.sendall(data)
                time.sleep(pause)
            return read_to_close(tls)


def post_bytes(body: bytes, *extra: bytes) -> bytes:
    head = [b"POST /api/v1/messages HTTP/1.1", b"Host: localhost", b"Authorization: Bearer test-key",
            b"Content-Type: text/plain", b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def test_pipelined_requests_are_answered_whole_and_in_order(
    redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    proxy = shared_proxy(redis_url)
    requests = [post_bytes(b"message %d" % number) for number in range(5)]
    requests.append(post_bytes(b"last", b"Connection: close"))
    answer = raw_exchange(proxy, certs, b"".join(requests))  # one write: the proxy reads them together
    answers = answer.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 6 and all(one.startswith(b"202 Accepted") for one in answers), answer
    ids = [json.loads(one.split(b"\r\n\r\n", 1)[1])["id"] for one in answers]
    assert [stored(redis_url, message_id)[b"body"] for message_id in ids] == [
        *(b"message %d" % number for number in range(5)), b"last"
    ]


def test_expect_100_continue_and_malformed_requests_are_answered(
    redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    proxy = shared_proxy(redis_url)
    head, body = post_bytes(b"after continue", b"Expect: 100-continue", b"Connection: close").split(b"\r\n\r\n")
    answer = raw_exchange(proxy, certs, head + b"\r\n\r\n", body, pause=0.3)
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 "), answer
    assert stored(redis_url, json.loads(answer.split(b"\r\n\r\n")[-1])["id"])[b"body"] == b"after continue"
    assert raw_exchange(proxy, certs, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert queue_length(redis_url) == 1


def test_a_request_head_over_32_kib_is_refused_with_431_and_nothing_stored(
    redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    proxy = shared_proxy(redis_url)
    many = [b"X-Pad-%d: %s" % (number, b"p" * 1000) for number in range(40)]  # 40 lines of 1 KB
    answer = raw_exchange(proxy, certs, post_bytes(b"many", *many))
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "headers_too_large"
    fits = [b"X-Pad-%d: %s" % (number, b"p" * 1000) for number in range(28)]  # 28 KB: under the cap
    assert raw_exchange(proxy, certs, post_bytes(b"fits", *fits, b"Connection: close")).startswith(b"HTTP/1.1 202")
    assert queue_length(redis_url) == 1


def test_one_endless_header_line_is_cut_off_long_before_it_ends(
    redis_url: str, shared_proxy: StartProxy, certs: CertFiles
) -> None:
    """httptools buffers a header line until it ends: the proxy must not wait for 2 GB of it."""
    proxy = shared_proxy(redis_url)
    context = ssl.create_default_context(cafile=str(certs.ca))
    sent = 0
    with socket.create_connection(("localhost", proxy.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"POST /api/v1/messages HTTP/1.1\r\nHost: localhost\r\nX-Endless: ")
            with pytest.raises(OSError):  # the proxy answers 431 and drops the connection
                while sent < 200_000_000:
                    tls.sendall(b"e" * 65536)
                    sent += 65536
    assert sent < 50_000_000  # the buffers on the way hold a few MB
    assert proxy.post(b"still serving")[0] == 202
    assert queue_length(redis_url) == 1


def test_large_bodies_on_one_connection_are_no_large_heads(
    redis_url: str, start_proxy: StartProxy, certs: CertFiles
) -> None:
    proxy = start_proxy(redis_url, FERRY_MAX_BODY_BYTES=1_000_000)
    bodies = [bytes([65 + number]) * 300_000 for number in range(4)]
    requests = [post_bytes(body) for body in bodies] + [post_bytes(b"last", b"Connection: close")]
    answer = raw_exchange(proxy, certs, b"".join(requests))
    assert answer.count(b"HTTP/1.1 202 ") == 5, answer[:300]
    assert queue_length(redis_url) == 5


def batch(*items: dict[str, object]) -> bytes:
    return json.dumps({"messages": list(items)}).encode()


def test_batch_stores_all_in_order_with_their_types(redis_url: str, shared_proxy: StartProxy) -> None:
    proxy = shared_proxy(redis_url)
    status, _, answer = proxy.request(
        "POST",
        "/api/v1/messages/batch",
        batch(
            {"json": {"n": 1}},
            {"body": "héllo", "content_type": "text/plain"},
            {"body_base64": base64.b64encode(b"\xff\x00").decode()},
        ),
        {"Content-Type": "application/json"},
    )
    assert status == 202
    ids = [m["id"] for m in answer["messages"]]
    assert ids == sorted(ids) and len(set(ids)) == 3
    # A content type at its default is not stored (docs/storage.md): it reads as application/json.
    bodies = [(stored(redis_url, i)[b"body"], stored(redis_url, i).get(b"content_type", b"application/json"))
              for i in ids]
    assert bodies == [
        (b'{"n":1}', b"application/json"),
        ("héllo".encode(), b"text/plain"),
        (b"\xff\x00", b"application/octet-stream"),
    ]
    assert client(redis_url).lrange("message_queue", 0, -1)[::-1] == [i.encode() for i in ids]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"not json", "application/json", 422, "invalid_request"),
        (json.dumps({"messages": []}).encode(), "application/json", 422, "invalid_request"),
        (json.dumps({"messages": [{"json": 1, "body": "x"}]}).encode(), "application/json", 422, "invalid_request"),
        (json.dumps({"messages": [{"body_base64": "***"}]}).encode(), "application/json", 422, "invalid_request"),
        (json.dumps({"messages": [{"json": n} for n in range(4)]}).encode(), "application/json", 422, "invalid_request"),
        (json.dumps({"messages": [{"json": 1}]}).encode(), "text/plain", 415, "unsupported_media_type"),
    ],
)
def test_bad_batches_are_refused_whole(
    body: bytes, content_type: str, status: int, code: str, redis_url: str, shared_proxy: StartProxy
) -> None:
    proxy = shared_proxy(redis_url, FERRY_MAX_BATCH=3)
    got, _, answer = proxy.request("POST", "/api/v1/messages/batch", body, {"Content-Type": content_type})
    assert (got, answer["error"]) == (status, code) and answer["detail"]
    assert queue_length(redis_url) == 0


def test_queue_cap_answers_503_with_retry_after(redis_url: str, start_proxy: StartProxy) -> None:
    proxy = start_proxy(redis_url, FERRY_MAX_QUEUE_SIZE=2)
    assert [proxy.post(b"{}")[0] for _ in range(2)] == [202, 202]
    status, headers, answer = proxy.post(b"{}")
    assert (status, answer["error"], headers["retry-after"]) == (503, "queue_full", "5")
    status, _, answer = proxy.request(
        "POST", "/api/v1/messages/batch", batch({"json": 1}), {"Content-Type": "application/json"}
    )
    assert (status, answer["error"]) == (503, "queue_full")
    assert queue_length(redis_url) == 2


def test_rate_limit_per_key_answers_429_with_retry_after(redis_url: str, start_proxy: StartProxy) -> None:
    proxy = start_proxy(redis_url, FERRY_API_KEYS="alice,bob", FERRY_RATE_LIMIT=1, FERRY_RATE_LIMIT_BURST=2)
    alice = [proxy.request("POST", "/api/v1/messages", b"{}", key="alice") for _ in range(3)]
    assert [status for status, _, _ in alice] == [202, 202, 429]
    assert alice[2][2]["error"] == "rate_limited" and alice[2][1]["retry-after"] == "1"
    assert proxy.request("POST", "/api/v1/messages", b"{}", key="bob")[0] == 202  # bob has his own bucket
    time.sleep(1.1)
    assert proxy.request("POST", "/api/v1/messages", b"{}", key="alice")[0] == 202
    assert queue_length(redis_url) == 4


def test_health_says_200_with_redis_and_503_without(own_redis: RedisProcess, start_proxy: StartProxy) -> None:
    proxy = start_proxy(own_redis.url)
    status, _, answer = proxy.request("GET", "/api/v1/health", key=None)
    assert (status, answer) == (200, {"status": "ok", "redis": "up", "queue_size": 0})
    own_redis.kill()
    status, headers, answer = proxy.request("GET", "/api/v1/health", key=None)
    assert (status, answer["error"], headers["retry-after"]) == (503, "redis_unavailable", "1")
    status, _, answer = proxy.post(b"{}")
    assert (status, answer["error"]) == (503, "redis_unavailable")
    own_redis.start()
    wait_until(lambda: proxy.request("GET", "/api/v1/health", key=None)[0] == 200)
    assert proxy.post(b"{}")[0] == 202


def test_health_and_metrics_need_a_key_when_configured(redis_url: str, start_proxy: StartProxy) -> None:
    proxy = start_proxy(redis_url, FERRY_HEALTH_METRICS_NEED_KEY="true")
    for path in ("/api/v1/health", "/metrics"):
        assert proxy.request("GET", path, key=None)[0] == 401
        assert proxy.request("GET", path)[0] == 200


def test_plain_http_on_a_public_address_needs_insecure(redis_url: str) -> None:
    refused = subprocess.run(
        [ferry_command(), "proxy", "--host", "0.0.0.0", "--port", str(free_port())],
        env=bare_env(REDIS_URL=redis_url, FERRY_API_KEYS="k"),
        capture_output=True, text=True, timeout=30,
    )
    assert refused.returncode == 2 and "refusing to serve plain HTTP on 0.0.0.0" in refused.stderr


def test_tls_is_1_2_or_newer(redis_url: str, shared_proxy: StartProxy, certs: CertFiles) -> None:
    proxy = shared_proxy(redis_url)
    old = ssl.create_default_context(cafile=str(certs.ca))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is, rightly
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as refused:
        with socket.create_connection(("localhost", proxy.port), timeout=5) as raw:
            old.wrap_socket(raw, server_hostname="localhost")
    assert "NO_PROTOCOLS_AVAILABLE" not in str(refused.value)  # the client offered 1.1; the server said no
    modern = ssl.create_default_context(cafile=str(certs.ca))
    with socket.create_connection(("localhost", proxy.port), timeout=5) as raw:
        with modern.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_mtls_requires_a_client_certificate_of_the_ca(
    redis_url: str, start_proxy: StartProxy, certs: CertFiles
) -> None:
    proxy = start_proxy(redis_url, "--client-ca", str(certs.ca))
    for client_cert in (None, (certs.other_client_cert, certs.other_client_key)):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            proxy.request("POST", "/api/v1/messages", b"{}", client_cert=client_cert)
    status, _, _ = proxy.request("POST", "/api/v1/messages", b"{}", client_cert=(certs.client_cert, certs.client_key))
    assert status == 202 and queue_length(redis_url) == 1


def test_metrics_sum_every_process(redis_url: str, start_proxy: StartProxy) -> None:
    proxy = start_proxy(redis_url, "--workers", "2")
    threads = [threading.Thread(target=lambda: [proxy.post(b"{}") for _ in range(25)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    answered = 'proxy_requests_total{method="POST",route="/api/v1/messages",status="202"} 200.0'
    # Each process writes its tally every second: within that, a scrape sees both.
    wait_until(lambda: answered in scrape_text(proxy.base + "/metrics", proxy.context()), timeout=5)
    runs = set()
    for _ in range(12):  # each scrape is answered by one process or the other: all must see 200
        text = scrape_text(proxy.base + "/metrics", proxy.context())
        assert answered in text
        assert "redis_queue_size 200.0" in text
        assert "proxy_messages_accepted_total 200.0" in text
        runs |= set(re.findall(r'^ferry_proxy_run_info\{run="([^"]+)"\} 1.0$', text, re.MULTILINE))
    assert len(runs) == 1  # one instance, whichever of its processes answers (verify differences by it)
    assert queue_length(redis_url) == 200
    route = 'method="POST",route="/api/v1/messages"'
    assert f"proxy_requests_duration_seconds_count{{{route}}} 200.0" in text
    assert f'proxy_requests_duration_seconds_bucket{{le="+Inf",{route}}} 200.0' in text
    buckets = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("proxy_requests_duration_seconds_bucket") and route in line
    ]
    assert len(buckets) == 13 and buckets == sorted(buckets)  # cumulative, as Prometheus reads them
    total = next(line for line in text.splitlines() if line.startswith(f"proxy_requests_duration_seconds_sum{{{route}}}"))
    assert 0 < float(total.rsplit(" ", 1)[1]) < 200 * 5


def test_redis_killed_mid_load_only_503_after_and_every_202_is_stored(
    own_redis: RedisProcess, start_proxy: StartProxy
) -> None:
    proxy = start_proxy(own_redis.url)
    answers: list[tuple[float, float, int, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                status, _, answer = proxy.post(b'{"load": true}')
            except OSError:
                continue
            answers.append((sent, time.monotonic(), status, answer.get("id", "")))

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(answers) > 200)
    own_redis.kill()
    killed = time.monotonic()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()

    after = [status for sent, _, status, _ in answers if sent > killed]
    assert after and set(after) == {503}
    accepted = [message_id for _, _, status, message_id in answers if status == 202]
    own_redis.start()  # appendfsync always: what was acknowledged is on disk
    redis = own_redis.client()
    assert all(redis.exists(f"{{message_queue}}:msg:{i}") for i in accepted)
    # Besides those, at most the one request per client caught by the kill: stored, but
    # its answer lost with the connection (a 503 the client retries: at least once).
    assert len(accepted) <= redis.llen("message_queue") <= len(accepted) + len(threads)


@pytest.mark.both_servers
def test_strict_durability_fsyncs_before_202_or_refuses_a_server_that_cannot(
    redis_kind: str, redis_url: str, start_proxy: StartProxy
) -> None:
    version = client(redis_url).info("server")
    waitaof = "valkey_version" in version or tuple(map(int, version["redis_version"].split(".")[:2])) >= (7, 2)
    if not waitaof:  # Debian's Redis 7.0 has no WAITAOF: strict mode must not pretend
        refused = subprocess.run(
            [ferry_command(), "proxy", "--port", str(free_port())],
            env=bare_env(REDIS_URL=redis_url, FERRY_API_KEYS="k", FERRY_DURABILITY="strict"),
            capture_output=True, text=True, timeout=30,
        )
        assert refused.returncode == 2 and "FERRY_DURABILITY=strict needs WAITAOF" in refused.stderr
        return
    proxy = start_proxy(redis_url, FERRY_DURABILITY="strict")
    before = client(redis_url).info("persistence")["aof_last_write_status"]
    status, _, answer = proxy.post(b'{"precious": true}')
    assert status == 202 and before == "ok"
    assert stored(redis_url, answer["id"])[b"body"] == b'{"precious": true}'
    client(redis_url).config_set("appendonly", "no")  # nothing to fsync to: no 202 any more
    status, _, answer = proxy.post(b"{}")
    assert (status, answer["error"]) == (503, "redis_unavailable")
    client(redis_url).config_set("appendonly", "yes")
