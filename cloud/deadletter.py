"""Dead letters: what the ingester publishes for a message it cannot write, and its counters.

A dead letter goes to ``<root>/v1/deadletter`` at QoS 1 with a JSON body::

    {"topic": "fieldlink/v1/plant-a/gw-01/data", "kind": "not_json",
     "reason": "not JSON: unexpected character ...", "received_ns": 1732900000123456789,
     "payload_size": 17, "truncated": false, "payload_b64": "bm90IGpzb24gYXQgYWxs"}

The payload is base64 (it may not be text) and cut to :data:`MAX_DEAD_LETTER_PAYLOAD` bytes,
so an oversized message does not become an oversized dead letter.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field

import orjson

#: Bytes of the refused payload kept in its dead letter.
MAX_DEAD_LETTER_PAYLOAD = 64 * 1024
#: Source topics remembered for "log once per source"; beyond it, new sources are only counted.
MAX_LOGGED_SOURCES = 10_000


def deadletter_body(topic: str, kind: str, reason: str, payload: bytes, received_ns: int) -> bytes:
    kept = payload[:MAX_DEAD_LETTER_PAYLOAD]
    return orjson.dumps(
        {
            "topic": topic,
            "kind": kind,
            "reason": reason,
            "received_ns": received_ns,
            "payload_size": len(payload),
            "truncated": len(kept) < len(payload),
            "payload_b64": base64.b64encode(kept).decode("ascii"),
        }
    )


@dataclass
class Counters:
    """What the ingester did since it started. Touched only by the event loop thread."""

    messages_received: int = 0
    readings_written: int = 0
    batches_written: int = 0
    write_retries: int = 0
    #: Points InfluxDB refused (400/413), each dead-lettered with the reason.
    readings_refused: int = 0
    #: Seqs of each agent not arrived (yet) at this ingester ("site/agent" → count).
    seq_gaps: dict[str, int] = field(default_factory=dict)
    #: Refused messages and points by kind (cloud.validate.InvalidKind).
    invalid: dict[str, int] = field(default_factory=dict)
    dead_lettered: int = 0

    def count_invalid(self, kind: str) -> None:
        self.invalid[kind] = self.invalid.get(kind, 0) + 1

    @property
    def invalid_total(self) -> int:
        return sum(self.invalid.values())

    def summary(self) -> str:
        invalid = ", ".join(f"{k}={v}" for k, v in sorted(self.invalid.items()))
        return (
            f"received {self.messages_received} messages, wrote {self.readings_written} readings "
            f"in {self.batches_written} batches ({self.write_retries} retries), "
            f"InfluxDB refused {self.readings_refused} readings, "
            f"invalid {self.invalid_total} messages"
            + (f" ({invalid})" if invalid else "")
            + f", dead-lettered {self.dead_lettered}"
            + (
                f", seqs not arrived {sum(self.seq_gaps.values())}"
                if any(self.seq_gaps.values())
                else ""
            )
        )


class FirstSeen:
    """Remembers which sources were already logged, so each is logged once, not per message."""

    def __init__(self, limit: int = MAX_LOGGED_SOURCES) -> None:
        self._seen: set[str] = set()
        self._limit = limit
        self._full_logged = False

    def first(self, source: str, log: logging.Logger) -> bool:
        if source in self._seen:
            return False
        if len(self._seen) >= self._limit:
            if not self._full_logged:
                self._full_logged = True
                log.warning(
                    "more than %d sources sent invalid messages; further ones are only counted",
                    self._limit,
                )
            return False
        self._seen.add(source)
        return True
