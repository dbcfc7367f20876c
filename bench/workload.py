"""Edge workloads: ``N devices × M points @ T seconds`` and the register map every device holds.

One register map serves all three sides of the benchmark, so they cannot disagree:

* the farm's ``kind: sim`` config (:func:`sim_config`), what the devices answer;
* the agent's ``kind: edge`` config (:func:`edge_config`), what fieldlink polls;
* the naive script's device list (:func:`naive_spec`), what the baseline polls.

Every device holds the same ``M`` points at consecutive holding-register addresses, cycling
through a pattern of ten that mixes the types a real meter has (float32, int16 with a scale,
uint16, uint32, int32). Ten points take 17 registers, so 100 points are 170 registers: two
reads of at most 125 registers, for the planner and for the naive script alike.

Values are constants, which the simulator encodes once and answers from cached bytes, except
in the last ten points, where a sine and a counter make every poll's data move. Waveforms are
evaluated per request, and a read covering one is assembled slot by slot; with waveforms all
over the map the farm spends ~90 µs per request, with them confined to the last read it
answers the first read from cache.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

#: Devices behind one farm port (one Modbus TCP gateway, one bus of the agent). A gateway
#: in front of an RS-485 segment serves up to 32 unit loads; 20 is a typical segment.
DEVICES_PER_GATEWAY = 20
#: The longest read the Modbus spec allows (FC3/FC4), and the device default of the agent.
MAX_READ = 125


@dataclass(frozen=True, slots=True)
class PointSpec:
    name: str
    address: int
    type: str  # a drivers.modbus.codec.RegisterType value
    unit: str
    scale: float
    #: The simulator's `value:` (a number or a waveform mapping), in engineering units.
    value: Any

    @property
    def count(self) -> int:
        return 2 if self.type in ("float32", "uint32", "int32") else 1


# (type, unit, scale, value) of the ten points of one pattern cycle; `k` makes values differ
# per point and device. 17 registers per cycle.
def _pattern(slot: int, k: int, moving: bool) -> tuple[str, str, float, Any]:
    if slot == 0:
        sine = {
            "wave": "sine",
            "amplitude": 5.0,
            "period": 60.0,
            "offset": 230.0,
            "phase": float(k % 360),
        }
        return "float32", "V", 1.0, sine if moving else round(228.0 + (k % 40) * 0.1, 1)
    if slot == 1:
        counter = {"wave": "counter", "start": 1000 + k, "step": 7}
        return "uint32", "Wh", 1.0, counter if moving else 1000 + k
    if slot in (2, 3, 4):
        return "float32", "A", 1.0, round(10.0 + (k % 97) * 0.13, 2)
    if slot in (5, 6):
        return "int16", "degC", 0.1, round(20.0 + (k % 50) * 0.1, 1)
    if slot == 7:
        return "uint16", "%", 1.0, k % 101
    if slot == 8:
        return "uint32", "s", 1.0, 100_000 + k
    return "int32", "W", 1.0, -5000 + k


def point_specs(points: int, device_index: int = 0) -> list[PointSpec]:
    """The register map of one device: ``points`` values from holding address 0 upwards."""
    out: list[PointSpec] = []
    address = 0
    for i in range(points):
        moving = i >= points - 10
        kind, unit, scale, value = _pattern(i % 10, device_index * 7 + i, moving)
        spec = PointSpec(f"p{i:03d}", address, kind, unit, scale, value)
        out.append(spec)
        address += spec.count
    return out


def read_blocks(specs: list[PointSpec], max_read: int = MAX_READ) -> list[tuple[int, int]]:
    """``(address, count)`` of the reads covering ``specs`` (consecutive, never splitting a
    value): what the planner makes of this map, and what the naive script reads."""
    blocks: list[tuple[int, int]] = []
    start = end = -1
    for spec in specs:
        stop = spec.address + spec.count
        if start >= 0 and stop - start <= max_read and spec.address == end:
            end = stop
            continue
        if start >= 0:
            blocks.append((start, end - start))
        start, end = spec.address, stop
    if start >= 0:
        blocks.append((start, end - start))
    return blocks


_WORKLOAD = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*@\s*([0-9.]+)\s*s?\s*$")


@dataclass(frozen=True, slots=True)
class Workload:
    devices: int
    points: int
    interval: float

    @classmethod
    def parse(cls, text: str) -> Workload:
        """``"100x100@1"`` (or ``100x100@1s``): 100 devices of 100 points, polled every 1 s."""
        match = _WORKLOAD.match(text)
        if match is None:
            raise ValueError(
                f"not a workload: {text!r}; write DEVICESxPOINTS@SECONDS, e.g. 20x100@1"
            )
        devices, points, interval = int(match[1]), int(match[2]), float(match[3])
        if devices < 1 or not 1 <= points <= 1000 or interval <= 0:
            raise ValueError(f"not a workload: {text!r}; need ≥1 device, 1..1000 points, T > 0")
        return cls(devices, points, interval)

    @property
    def label(self) -> str:
        return f"{self.devices}x{self.points}@{self.interval:g}s"

    @property
    def expected_pts_s(self) -> float:
        return self.devices * self.points / self.interval

    @property
    def requests_per_poll(self) -> int:
        return len(read_blocks(point_specs(self.points)))

    @property
    def expected_req_s(self) -> float:
        return self.devices * self.requests_per_poll / self.interval


def device_name(index: int) -> str:
    return f"dev-{index:04d}"


def gateway_of(index: int, per_gateway: int = DEVICES_PER_GATEWAY) -> int:
    return index // per_gateway


def unit_of(index: int, per_gateway: int = DEVICES_PER_GATEWAY) -> int:
    return index % per_gateway + 1


def sim_config(
    workload: Workload,
    device_indexes: range | list[int],
    per_gateway: int = DEVICES_PER_GATEWAY,
) -> dict[str, Any]:
    """The ``kind: sim`` document serving ``device_indexes`` of ``workload``."""
    devices = []
    for index in device_indexes:
        registers = [
            {"address": s.address, "type": s.type, "scale": s.scale, "value": s.value}
            if s.scale != 1.0
            else {"address": s.address, "type": s.type, "value": s.value}
            for s in point_specs(workload.points, index)
        ]
        devices.append(
            {
                "name": device_name(index),
                "gateway": f"gw-{gateway_of(index, per_gateway):03d}",
                "unit_id": unit_of(index, per_gateway),
                "registers": registers,
            }
        )
    return {"kind": "sim", "devices": devices}


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    unit_id: int


def edge_config(
    workload: Workload,
    endpoints: dict[str, Endpoint],
    broker: tuple[str, int],
    *,
    site: str = "bench",
    agent: str = "edge-1",
    spool: str | None = None,
) -> dict[str, Any]:
    """The ``kind: edge`` document: one bus per farm port, every device with all its points.

    Publishing, batching, the spool and the planner stay at their shipped defaults: the
    benchmark measures the agent as an operator would run it. Only the spool's file is
    placed (``spool``) so that runs never share one.
    """
    ports = sorted({(e.host, e.port) for e in endpoints.values()}, key=lambda hp: hp[1])
    bus_of = {hp: f"bus-{i:03d}" for i, hp in enumerate(ports)}
    buses = [
        {"name": name, "driver": "modbus", "host": host, "port": port, "timeout": 1.0}
        for (host, port), name in bus_of.items()
    ]
    devices = []
    for index in range(workload.devices):
        name = device_name(index)
        ep = endpoints[name]
        points = [
            {"name": s.name, "address": s.address, "type": s.type, "unit": s.unit}
            | ({"scale": s.scale} if s.scale != 1.0 else {})
            for s in point_specs(workload.points, index)
        ]
        devices.append(
            {
                "name": name,
                "bus": bus_of[(ep.host, ep.port)],
                "unit_id": ep.unit_id,
                "interval": workload.interval,
                "points": points,
            }
        )
    doc: dict[str, Any] = {
        "kind": "edge",
        "agent": {"id": agent, "site": site},
        "mqtt": {"host": broker[0], "port": broker[1]},
    }
    if spool is not None:
        doc["spool"] = {"path": spool}
    doc["buses"] = buses
    doc["devices"] = devices
    return doc


def to_yaml(doc: Any) -> str:
    """Block YAML with one flow mapping per leaf (``- {"name": "p000", ...}``), written
    directly: PyYAML's dumper needs seconds for 100,000 points. Scalars are JSON, which is
    valid YAML, so nothing needs escaping rules of its own."""
    lines: list[str] = []
    _emit(doc, 0, lines)
    return "\n".join(lines) + "\n"


def _is_leaf(value: Any) -> bool:
    return not isinstance(value, dict | list) or (
        isinstance(value, dict) and not any(isinstance(v, dict | list) for v in value.values())
    )


def _emit(value: Any, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if _is_leaf(item):
                lines.append(f"{pad}{key}: {json.dumps(item)}")
            else:
                lines.append(f"{pad}{key}:")
                _emit(item, indent + 2, lines)
    elif isinstance(value, list):
        for item in value:
            if _is_leaf(item):
                lines.append(f"{pad}- {json.dumps(item)}")
            else:
                sub: list[str] = []
                _emit(item, indent + 2, sub)
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines.extend(sub[1:])
    else:
        lines.append(f"{pad}{json.dumps(value)}")


def naive_spec(
    workload: Workload, endpoints: dict[str, Endpoint], broker: tuple[str, int], topic: str
) -> dict[str, Any]:
    """What the naive script is given: broker, topic, interval and the devices with their
    register maps (it plans its own reads)."""
    devices = []
    for index in range(workload.devices):
        name = device_name(index)
        ep = endpoints[name]
        devices.append(
            {
                "name": name,
                "host": ep.host,
                "port": ep.port,
                "unit": ep.unit_id,
                "points": [
                    [s.name, s.address, s.type, s.scale]
                    for s in point_specs(workload.points, index)
                ],
            }
        )
    return {
        "broker": {"host": broker[0], "port": broker[1]},
        "topic": topic,
        "interval": workload.interval,
        "devices": devices,
    }
