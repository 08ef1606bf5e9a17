"""The 500-byte bodies every benchmark sends: no dependency, so any peer's venv imports it.

`{"id":"<8 digits>","t":<scheduled, CLOCK_MONOTONIC>,"pad":"xx...x"}`: the sink reads the
number and the schedule time at fixed offsets (bench/sink.py), whatever carried the body.
"""

from __future__ import annotations

SIZE = 500


def body(number: int, scheduled: float = 0.0) -> bytes:
    head = b'{"id":"%08d","t":%17.6f,"pad":"' % (number, scheduled)
    return head + b"x" * (SIZE - len(head) - 2) + b'"}'


def bodies(count: int) -> list[bytes]:
    return [body(number) for number in range(count)]
