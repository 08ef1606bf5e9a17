"""The reference main server, run as `ferry sink` in a subprocess and spoken to over real sockets."""

from __future__ import annotations

import json
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.certs import CertFiles
from tests.support.processes import Sink

StartSink = Callable[..., Sink]


def client_context(certs: CertFiles, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A client that trusts the test CA, presenting `cert` when given."""
    context = ssl.create_default_context(cafile=str(certs.ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def test_each_message_is_stored_once_and_repeats_count_as_duplicates(start_sink: StartSink) -> None:
    sink = start_sink(tls=False)

    first = sink.deliver("m-1", attempt=1)
    again = sink.deliver("m-1", attempt=2)
    other = sink.deliver("m-2")

    assert (first.status, first.json()) == (200, {"id": "m-1", "duplicate": False})
    assert (again.status, again.json()) == (200, {"id": "m-1", "duplicate": True})
    assert other.json() == {"id": "m-2", "duplicate": False}
    assert sink.stats() == {"received": 3, "unique": 2, "duplicates": 1, "failed": 0}
    assert sink.request("GET", "/messages/m-1").headers["X-Sink-Deliveries"] == "2"


def test_body_and_content_type_come_back_byte_for_byte(start_sink: StartSink) -> None:
    sink = start_sink(tls=False)
    body = bytes(range(256)) + b"\xff\xfe\x00 not utf-8 \xc3\x28"
    content_type = "text/plain; charset=latin-1"
    signature = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000", "webhook-signature": "v1,abc="}

    sink.request("POST", "/", body, {"X-Message-Id": "bin", "X-Attempt": "3",
                                     "Content-Type": content_type, **signature})
    sink.request("POST", "/", b"a later copy", {"X-Message-Id": "bin", "X-Attempt": "4"})
    stored = sink.request("GET", "/messages/bin")

    assert stored.status == 200
    assert stored.body == body
    assert stored.headers["Content-Type"] == content_type
    assert stored.headers["X-Sink-First-Attempt"] == "3"
    assert json.loads(stored.headers["X-Sink-Signature-Headers"]) == signature
    assert sink.request("GET", "/messages/unknown").status == 404


def test_delivery_without_message_id_is_refused_and_not_stored(start_sink: StartSink) -> None:
    sink = start_sink(tls=False)

    answer = sink.request("POST", "/hooks", b"{}")

    assert (answer.status, answer.json()) == (400, {"error": "missing_message_id"})
    assert sink.stats()["received"] == 0


def test_https_with_the_test_ca(start_sink: StartSink) -> None:
    sink = start_sink()

    assert sink.deliver("secure").json() == {"id": "secure", "duplicate": False}
    with pytest.raises(ssl.SSLCertVerificationError):
        sink.request("GET", "/stats", context=ssl.create_default_context())


def test_mtls_accepts_the_client_cert_of_its_ca(start_sink: StartSink, certs: CertFiles) -> None:
    sink = start_sink("--client-ca", str(certs.ca))

    assert sink.deliver("from-worker").status == 200
    assert sink.stats()["unique"] == 1


def test_mtls_refuses_no_client_cert_and_a_strangers_cert(
    start_sink: StartSink, certs: CertFiles
) -> None:
    sink = start_sink("--client-ca", str(certs.ca))
    anonymous = client_context(certs)
    stranger = client_context(certs, certs.other_client_cert, certs.other_client_key)

    for context in (anonymous, stranger):
        # TLS 1.3 reports the server's rejection on the first read, not in connect().
        with pytest.raises((ssl.SSLError, ConnectionError)):
            sink.request("POST", "/hooks", b"{}", {"X-Message-Id": "intruder"}, context=context)
    assert sink.stats()["received"] == 0


def test_fail_rate_1_answers_the_status_with_retry_after_and_stores_nothing(
    start_sink: StartSink,
) -> None:
    sink = start_sink("--fail-rate", "1", "--status", "500", "--retry-after", "7", tls=False)

    answer = sink.deliver("doomed")

    assert answer.status == 500
    assert answer.headers["Retry-After"] == "7"
    assert sink.stats() == {"received": 0, "unique": 0, "duplicates": 0, "failed": 1}
    assert sink.request("GET", "/messages/doomed").status == 404


def test_faults_change_at_runtime_and_bad_ones_are_refused(start_sink: StartSink) -> None:
    sink = start_sink(tls=False)

    changed = sink.post_json("/faults", {"fail_rate": 1, "status": 429, "retry_after": 0.5})
    refused = sink.deliver("m")
    assert changed.json() == {"fail_rate": 1.0, "status": 429, "latency_ms": 0.0, "retry_after": 0.5}
    assert (refused.status, refused.headers["Retry-After"]) == (429, "0.5")

    sink.post_json("/faults", {"fail_rate": 0, "retry_after": None, "latency_ms": 300})
    started = time.monotonic()
    assert sink.deliver("m").status == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert sink.request("GET", "/faults").json()["latency_ms"] == 300
    assert time.monotonic() - started < 0.3, "control routes are not slowed down"

    for bad in ({"fail_rate": 1.5}, {"fail_rate": True}, {"status": "503"}, {"status": 99},
                {"latency_ms": -1}, {"retry_after": "soon"}, {"typo": 1}, [1]):
        assert sink.post_json("/faults", bad).status == 400, bad
    assert sink.request("POST", "/faults", b"not json").status == 400
    assert sink.stats() == {"received": 1, "unique": 1, "duplicates": 0, "failed": 1}


def test_outage_refuses_connections_then_listens_again(start_sink: StartSink) -> None:
    sink = start_sink(tls=False)
    pooled = sink.connection()  # a client's keep-alive connection must not outlive the outage
    pooled.request("GET", "/stats")
    pooled.getresponse().read()

    assert sink.post_json("/outage", {"seconds": 1}).status == 202
    went_down = time.monotonic()

    with pytest.raises(ConnectionRefusedError):
        sink.deliver("during")
    with pytest.raises(ConnectionError):
        pooled.request("GET", "/stats")
        pooled.getresponse()
    pooled.close()
    while True:
        try:
            stats = sink.stats()
            break
        except ConnectionRefusedError:
            assert time.monotonic() - went_down < 5, "the sink did not come back"
            time.sleep(0.05)
    assert time.monotonic() - went_down >= 0.9
    assert stats["received"] == 0
    assert sink.deliver("after").status == 200


def test_counts_survive_sigkill_and_restart(start_sink: StartSink) -> None:
    sink = start_sink(tls=False)
    for message_id in ("a", "b", "a"):
        assert sink.deliver(message_id).status == 200

    sink.kill()
    sink.start()

    assert sink.stats() == {"received": 3, "unique": 2, "duplicates": 1, "failed": 0}
    assert sink.deliver("b").json() == {"id": "b", "duplicate": True}
    assert sink.request("GET", "/messages/a").headers["X-Sink-Deliveries"] == "2"


def test_sigterm_stops_the_sink_with_exit_code_0(start_sink: StartSink) -> None:
    sink = start_sink(tls=False)

    sink.signal(signal.SIGTERM)
    assert sink.wait(timeout=10) == 0
    with pytest.raises(ConnectionRefusedError):
        sink.stats()
