"""The naive edge script: what a competent person writes in an afternoon instead of fieldlink.

One asyncio task per gateway (Modbus TCP port) with one pymodbus ``AsyncModbusTcpClient``;
every interval it reads each of its devices in turn (the same blocks of up to 125 registers
the planner makes), decodes each value with ``struct``, applies the scale and publishes one
JSON message per poll with paho-mqtt at QoS 1. No config validation, no quality, no
batching, no backoff: a failed poll is printed and skipped, and a poll round that overruns
its interval simply starts the next one late.

    python -m bench.baseline.naive_edge SPEC.json

``SPEC.json`` (written by ``bench.edge``) holds the broker, the topic, the interval and the
devices: ``{"name", "host", "port", "unit", "points": [[name, address, type, scale], ...]}``.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import AsyncModbusTcpClient

FORMATS = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}
SIZES = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
MAX_READ = 125


def make_blocks(points: list[list[Any]]) -> list[tuple[int, int, list[list[Any]]]]:
    """Group consecutive registers into reads of at most 125 registers."""
    blocks: list[tuple[int, int, list[list[Any]]]] = []
    for point in sorted(points, key=lambda p: p[1]):
        address, size = point[1], SIZES[point[2]]
        if blocks:
            start, count, members = blocks[-1]
            if address == start + count and count + size <= MAX_READ:
                blocks[-1] = (start, count + size, [*members, point])
                continue
        blocks.append((address, size, [point]))
    return blocks


async def poll_gateway(
    host: str,
    port: int,
    devices: list[dict[str, Any]],
    interval: float,
    mqttc: mqtt.Client,
    topic: str,
) -> None:
    client = AsyncModbusTcpClient(host, port=port)
    await client.connect()
    for device in devices:
        device["blocks"] = make_blocks(device["points"])
    next_round = time.monotonic()
    while True:
        if not client.connected:
            await client.connect()
        for device in devices:
            values: dict[str, Any] = {}
            try:
                for start, count, points in device["blocks"]:
                    rr = await client.read_holding_registers(
                        start, count=count, device_id=device["unit"]
                    )
                    if rr.isError():
                        raise RuntimeError(f"modbus error {rr}")
                    raw = struct.pack(f">{count}H", *rr.registers)
                    for name, address, kind, scale in points:
                        value = struct.unpack_from(FORMATS[kind], raw, (address - start) * 2)[0]
                        values[name] = value * scale if scale != 1 else value
            except Exception as exc:
                print(f"{device['name']}: {exc}", file=sys.stderr)
                continue
            message = {"device": device["name"], "ts": time.time_ns(), "values": values}
            mqttc.publish(topic, json.dumps(message), qos=1)
        next_round += interval
        await asyncio.sleep(max(0.0, next_round - time.monotonic()))


async def main(spec: dict[str, Any]) -> None:
    mqttc = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="naive-edge")
    mqttc.connect(spec["broker"]["host"], spec["broker"]["port"])
    mqttc.loop_start()
    gateways: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for device in spec["devices"]:
        gateways.setdefault((device["host"], device["port"]), []).append(device)
    await asyncio.gather(
        *(
            poll_gateway(host, port, devices, spec["interval"], mqttc, spec["topic"])
            for (host, port), devices in gateways.items()
        )
    )


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        asyncio.run(main(json.load(f)))
