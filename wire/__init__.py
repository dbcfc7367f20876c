"""The edge↔cloud contract: the reading model, the topic layout and the payload codec.

Everything that crosses MQTT between an agent and an ingester is defined here and in
``docs/wire.md``; both sides import only this package to speak to each other.
"""

from wire.codec import (
    PAYLOAD_SCHEMA,
    Batch,
    PayloadError,
    decode_batch,
    encode_batch,
    encode_groups,
)
from wire.model import Group, Quality, Reading, Value, point_entry
from wire.topics import TopicError, data_subscription, data_topic, parse_data_topic

__all__ = [
    "PAYLOAD_SCHEMA",
    "Batch",
    "Group",
    "PayloadError",
    "Quality",
    "Reading",
    "TopicError",
    "Value",
    "data_subscription",
    "data_topic",
    "decode_batch",
    "encode_batch",
    "encode_groups",
    "parse_data_topic",
    "point_entry",
]
