"""The simulator's config file (``kind: sim``): which devices to serve and what they hold.

A register holds either a constant or a waveform evaluated at request time. Validation
catches what would otherwise surface as a confusing answer on the wire: overlapping
registers, values that run past address 65535, two devices answering the same unit id
on one port, and values that cannot be encoded in their register type.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Discriminator, Field, Tag, model_validator

from config.base import Ident, StrictModel
from config.errors import ConfigError, Problem
from config.loader import read_document, substitute_env, validate
from drivers.modbus.codec import CodecError, RegisterType, WordOrder, encode, register_count

#: Register types whose raw value is an integer (rounded and clamped, or wrapped by a counter).
INTEGER_TYPES = frozenset(
    {
        RegisterType.INT16,
        RegisterType.UINT16,
        RegisterType.INT32,
        RegisterType.UINT32,
        RegisterType.INT64,
        RegisterType.UINT64,
    }
)


def _finite(value: float) -> float:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


#: A number as written in the file. ``int`` is kept as ``int`` so 64-bit values stay exact.
Number = Annotated[int | float, AfterValidator(_finite)]
#: A finite float parameter of a waveform.
Real = Annotated[float, Field(allow_inf_nan=False)]


class ConstantWave(StrictModel):
    """A fixed value, the long form of ``value: 42``."""

    wave: Literal["constant"] = Field(description="`constant`: the value never changes.")
    value: Number | str = Field(description="The value: a number, or text for a string register.")


class SineWave(StrictModel):
    """``offset + amplitude · sin(2π · t / period + phase)``."""

    wave: Literal["sine"] = Field(description="`sine`: a sine around `offset`.")
    amplitude: Real = Field(description="Peak deviation from `offset`.")
    period: Real = Field(gt=0, description="Seconds for one full cycle.")
    offset: Real = Field(default=0.0, description="Centre value of the sine.")
    phase: Real = Field(
        default=0.0,
        description="Phase shift in degrees, so several devices need not peak together.",
    )


class RampWave(StrictModel):
    """``start + slope · t``, optionally restarting at ``start`` whenever it reaches ``max``."""

    wave: Literal["ramp"] = Field(description="`ramp`: a value rising (or falling) linearly.")
    start: Real = Field(default=0.0, description="Value at time 0.")
    slope: Real = Field(description="Change per second; negative for a falling ramp.")
    max: Real | None = Field(
        default=None,
        description=(
            "If set, the ramp restarts at `start` on reaching this value (a saw-tooth); "
            "needs a positive slope and max > start."
        ),
    )

    @model_validator(mode="after")
    def _wrap_reachable(self) -> RampWave:
        if self.max is not None:
            if self.slope <= 0:
                raise ValueError("@slope: a ramp with `max` needs a positive slope to reach it")
            if self.max <= self.start:
                raise ValueError(f"@max: must be greater than start ({self.start})")
        return self


class CounterWave(StrictModel):
    """An integer adding ``step`` every ``interval`` seconds; wraps past the type's maximum."""

    wave: Literal["counter"] = Field(description="`counter`: a monotonic integer counter.")
    start: int = Field(default=0, description="Value at time 0.")
    step: int = Field(default=1, ge=1, description="Added every `interval` seconds.")
    interval: Real = Field(default=1.0, gt=0, description="Seconds between two steps.")


class RandomWalkWave(StrictModel):
    """A bounded random walk, the same sequence for the same seed."""

    wave: Literal["random_walk"] = Field(description="`random_walk`: a bounded random walk.")
    start: Real = Field(description="Value at time 0.")
    step: Real = Field(gt=0, description="Largest change per move (uniform in ±step).")
    min: Real = Field(description="Lower bound; the walk never goes below it.")
    max: Real = Field(description="Upper bound; the walk never goes above it.")
    seed: int = Field(default=0, description="Seed of the generator, for reproducible runs.")
    interval: Real = Field(default=1.0, gt=0, description="Seconds between two moves.")

    @model_validator(mode="after")
    def _bounds(self) -> RandomWalkWave:
        if self.min > self.max:
            raise ValueError(f"@min: must not exceed max ({self.max})")
        if not self.min <= self.start <= self.max:
            raise ValueError(f"@start: must lie within min..max ({self.min}..{self.max})")
        return self


Wave = ConstantWave | SineWave | RampWave | CounterWave | RandomWalkWave

_WAVE_TAGS = {
    "constant": "Constant",
    "sine": "Sine",
    "ramp": "Ramp",
    "counter": "Counter",
    "random_walk": "RandomWalk",
}


def _value_kind(value: Any) -> str | None:
    """Pick the one member of the value union to validate against.

    Without this pydantic tries every member and reports each failure, so one typo in a
    waveform would produce five errors at paths nobody wrote. Tags are capitalised because
    the loader drops capitalised union tags from error paths.
    """
    if isinstance(value, dict):
        wave = value.get("wave")
        return _WAVE_TAGS.get(wave) if isinstance(wave, str) else None
    if isinstance(value, BaseModel):
        wave = getattr(value, "wave", None)
        return _WAVE_TAGS.get(wave) if isinstance(wave, str) else None
    if isinstance(value, bool):
        return None  # YAML `yes`/`true` is almost certainly a mistake, not 1
    if isinstance(value, int | float):
        return "Number"
    if isinstance(value, str):
        return "Text"
    return None


RegisterValue = Annotated[
    Annotated[Number, Tag("Number")]
    | Annotated[str, Tag("Text")]
    | Annotated[ConstantWave, Tag("Constant")]
    | Annotated[SineWave, Tag("Sine")]
    | Annotated[RampWave, Tag("Ramp")]
    | Annotated[CounterWave, Tag("Counter")]
    | Annotated[RandomWalkWave, Tag("RandomWalk")],
    Discriminator(
        _value_kind,
        custom_error_type="sim_value",
        custom_error_message=(
            "expected a number, a text, or a waveform with `wave:` one of "
            "constant, sine, ramp, counter, random_walk"
        ),
    ),
]


class SimRegister(StrictModel):
    """One value in a device's register map, occupying one or more consecutive registers."""

    table: Literal["holding", "input"] = Field(
        default="holding",
        description=(
            "Register table: `holding` (read by FC3, written by FC6/FC16) or `input` (FC4)."
        ),
    )
    address: int = Field(
        ge=0, le=65535, description="Protocol address (0-based) of the first register."
    )
    type: RegisterType = Field(description="How the value is encoded into registers.")
    order: WordOrder = Field(default=WordOrder.ABCD, description="Word/byte order of the value.")
    length: int | None = Field(
        default=None, ge=1, le=125, description="Registers a `string` occupies (strings only)."
    )
    scale: Real = Field(
        default=1.0,
        description=(
            "The register holds round((value - offset) / scale), so an agent configured with "
            "the same scale and offset reads back `value`."
        ),
    )
    offset: Real = Field(default=0.0, description="See `scale`.")
    value: RegisterValue = Field(
        description="A constant (number, or text for a string) or a waveform `{wave: ...}`."
    )

    @property
    def count(self) -> int:
        """Registers the value occupies."""
        return register_count(self.type, self.length)

    @property
    def end(self) -> int:
        """Last address occupied (inclusive)."""
        return self.address + self.count - 1

    def span(self) -> str:
        return f"{self.table} {self.address}..{self.end}"

    @model_validator(mode="after")
    def _consistent(self) -> SimRegister:
        kind = self.type
        if kind is RegisterType.STRING:
            if self.length is None:
                raise ValueError(
                    "@length: a string register needs `length` (registers it occupies)"
                )
            if self.scale != 1.0 or self.offset != 0.0:
                raise ValueError("@scale: a string register cannot have scale or offset")
        elif self.length is not None:
            raise ValueError(
                f"@length: only string registers have a length; {kind.value} has a fixed size"
            )
        if self.scale == 0:
            raise ValueError("@scale: must not be 0")
        if self.address + self.count > 65536:
            raise ValueError(
                f"@address: {kind.value} at {self.address} needs {self.count} registers and "
                "runs past the last address (65535)"
            )
        value = self.value
        constant = value.value if isinstance(value, ConstantWave) else value
        if kind is RegisterType.STRING:
            if not isinstance(constant, str):
                raise ValueError("@value: a string register needs a constant text value")
            try:
                encode(kind, self.order, constant, self.length)
            except (CodecError, UnicodeEncodeError) as exc:
                raise ValueError(f"@value: {_codec_reason(exc)}") from exc
        elif isinstance(constant, str):
            article = "an" if kind.value.startswith("int") else "a"
            raise ValueError(f"@value: {article} {kind.value} register needs a number, not text")
        elif isinstance(value, CounterWave) and kind not in INTEGER_TYPES:
            raise ValueError(f"@value: a counter needs an integer register type, not {kind.value}")
        return self


def _codec_reason(exc: Exception) -> str:
    if isinstance(exc, UnicodeEncodeError):
        return "text must be Latin-1 (one byte per character)"
    return str(exc)


class SimDevice(StrictModel):
    """One simulated device: a unit id on a TCP listener with its own register map."""

    name: Ident = Field(
        description="Unique device name; the key of `endpoints()` and of the ports file."
    )
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description=(
            "TCP port; 0 picks a free one. Devices with the same host and non-zero port share "
            "one listener (several unit ids on one port)."
        ),
    )
    gateway: Ident | None = Field(
        default=None,
        description=(
            "Devices naming the same gateway share one listener even with port 0, like devices "
            "behind one Modbus gateway. They must have the same host and port."
        ),
    )
    unit_id: int = Field(default=1, ge=0, le=247, description="Modbus unit id the device answers.")
    registers: list[SimRegister] = Field(min_length=1, description="The device's register map.")

    @model_validator(mode="after")
    def _no_overlaps(self) -> SimDevice:
        # Sweep each table in address order, remembering the register reaching furthest so
        # far: a register starting before that end overlaps it. O(n log n), so maps with
        # thousands of registers (benchmarks) validate quickly.
        ordered = sorted(
            range(len(self.registers)),
            key=lambda i: (self.registers[i].table, self.registers[i].address, i),
        )
        reach: int | None = None  # index of the register reaching furthest in this table
        for index in ordered:
            reg = self.registers[index]
            if reach is not None:
                prev = self.registers[reach]
                if prev.table == reg.table and reg.address <= prev.end:
                    later, earlier = max(index, reach), min(index, reach)
                    raise ValueError(
                        f"@registers[{later}]: overlaps registers[{earlier}] "
                        f"({self.registers[earlier].span()})"
                    )
                if prev.table != reg.table or reg.end > prev.end:
                    reach = index
            else:
                reach = index
        return self

    def listener_key(self) -> tuple[str, int, str]:
        """Devices with equal keys are served by one TCP listener."""
        if self.port != 0:
            return (self.host, self.port, "")
        if self.gateway is not None:
            return (self.host, 0, "gateway:" + self.gateway)
        return (self.host, 0, "device:" + self.name)


class SimConfig(StrictModel):
    """A simulated plant: Modbus TCP devices served by ``fieldlink sim run``."""

    kind: Literal["sim"] = Field(description="Must be `sim` for a simulator config.")
    devices: list[SimDevice] = Field(min_length=1, description="The simulated devices.")

    @model_validator(mode="after")
    def _devices_distinct(self) -> SimConfig:
        names: dict[str, int] = {}
        gateways: dict[str, int] = {}
        units: dict[tuple[tuple[str, int, str], int], int] = {}
        for index, device in enumerate(self.devices):
            first = names.setdefault(device.name, index)
            if first != index:
                raise ValueError(
                    f"@devices[{index}].name: duplicate device name {device.name!r} "
                    f"(first at devices[{first}])"
                )
            if device.gateway is not None:
                first = gateways.setdefault(device.gateway, index)
                other = self.devices[first]
                if (other.host, other.port) != (device.host, device.port):
                    raise ValueError(
                        f"@devices[{index}].port: gateway {device.gateway!r} is at "
                        f"{other.host}:{other.port} (devices[{first}]); devices of one gateway "
                        "need the same host and port"
                    )
            key = (device.listener_key(), device.unit_id)
            first = units.setdefault(key, index)
            if first != index:
                raise ValueError(
                    f"@devices[{index}].unit_id: unit {device.unit_id} on "
                    f"{_where(device)} is already served by devices[{first}] "
                    f"({self.devices[first].name})"
                )
        return self


def _where(device: SimDevice) -> str:
    where = f"{device.host}:{device.port}"
    return f"{where} (gateway {device.gateway})" if device.gateway is not None else where


def load_sim_config(path: Path, env: Mapping[str, str] = os.environ) -> SimConfig:
    """Read, substitute ``${VAR}``s and validate a simulator config file.

    Raises :class:`ConfigError` listing every problem found, each with its field path.
    """
    problems: list[Problem] = []
    doc = substitute_env(read_document(path), env, "", problems)
    config = validate(SimConfig, doc, "", problems)
    if problems or config is None:
        raise ConfigError(str(path), problems)
    return config


def sim_json_schema() -> dict[str, Any]:
    """JSON Schema of the simulator config, for ``fieldlink schema sim``."""
    return SimConfig.model_json_schema()
