"""The simulator config: what it accepts, and the exact messages for what it rejects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from config.errors import ConfigError
from config.sim import (
    ConstantWave,
    CounterWave,
    SimConfig,
    SineWave,
    load_sim_config,
    sim_json_schema,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "examples" / "sim-plant.yaml"


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def problems(tmp_path: Path, doc: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_sim_config(write(tmp_path, doc), env=env or {})
    return [p.render() for p in caught.value.problems]


def device(name: str = "d", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "registers": [{"address": 0, "type": "uint16", "value": 1}],
        **fields,
    }


def one_register(**register: Any) -> dict[str, Any]:
    return {"kind": "sim", "devices": [device(registers=[register])]}


def test_example_plant_loads() -> None:
    config = load_sim_config(EXAMPLE, env={})
    assert [d.name for d in config.devices] == ["meter-1", "pump-1", "tank-1", "inverter-1"]
    pump, tank = config.devices[1], config.devices[2]
    assert pump.listener_key() == tank.listener_key()
    assert (pump.unit_id, tank.unit_id) == (1, 2)


def test_defaults_and_value_forms(tmp_path: Path) -> None:
    doc = {
        "kind": "sim",
        "devices": [
            {
                "name": "d",
                "registers": [
                    {"address": 0, "type": "int64", "value": 2**62 + 1},
                    {"address": 4, "type": "float32", "value": {"wave": "constant", "value": 2}},
                    {
                        "address": 6,
                        "type": "int16",
                        "value": {"wave": "sine", "amplitude": 1, "period": 10},
                    },
                    {"address": 7, "type": "uint32", "value": {"wave": "counter"}},
                    {"address": 9, "type": "string", "length": 2, "value": "AB"},
                ],
            }
        ],
    }
    config = load_sim_config(write(tmp_path, doc), env={})
    dev = config.devices[0]
    assert (dev.host, dev.port, dev.unit_id, dev.gateway) == ("127.0.0.1", 0, 1, None)
    regs = dev.registers
    assert regs[0].table == "holding"
    assert regs[0].value == 2**62 + 1
    assert isinstance(regs[0].value, int)  # not a float: 64-bit values stay exact
    assert isinstance(regs[1].value, ConstantWave)
    assert isinstance(regs[2].value, SineWave)
    assert isinstance(regs[3].value, CounterWave)
    assert regs[4].count == 2


def test_env_substitution(tmp_path: Path) -> None:
    doc = {"kind": "sim", "devices": [device(host="${SIM_HOST}")]}
    config = load_sim_config(write(tmp_path, doc), env={"SIM_HOST": "127.0.0.2"})
    assert config.devices[0].host == "127.0.0.2"


def test_overlap_names_both_registers(tmp_path: Path) -> None:
    doc = {
        "kind": "sim",
        "devices": [
            device(
                registers=[
                    {"address": 10, "type": "int16", "value": 1},
                    {"address": 0, "type": "float32", "value": 1.5},
                    {"table": "input", "address": 1, "type": "int16", "value": 1},  # other table
                    {"address": 1, "type": "int16", "value": 2},
                ]
            )
        ],
    }
    assert problems(tmp_path, doc) == [
        "devices[0].registers[3]: overlaps registers[1] (holding 0..1)"
    ]


def test_overlap_found_when_later_register_starts_first(tmp_path: Path) -> None:
    doc = one_register(address=5, type="float64", value=1)
    doc["devices"][0]["registers"].append({"address": 4, "type": "uint32", "value": 1})
    assert problems(tmp_path, doc) == [
        "devices[0].registers[1]: overlaps registers[0] (holding 5..8)"
    ]


def test_overlap_with_a_long_earlier_register(tmp_path: Path) -> None:
    # registers[1] ends before registers[2] starts, but registers[0] reaches past both.
    doc = one_register(address=0, type="string", length=10, value="x")
    doc["devices"][0]["registers"] += [
        {"address": 2, "type": "uint16", "value": 1},
        {"address": 5, "type": "uint16", "value": 1},
    ]
    assert problems(tmp_path, doc) == [
        "devices[0].registers[1]: overlaps registers[0] (holding 0..9)"
    ]


def test_errors_of_all_devices_are_collected(tmp_path: Path) -> None:
    doc = {
        "kind": "sim",
        "devices": [
            device("a", registers=[{"address": 65535, "type": "float32", "value": 1}]),
            device("b", registers=[{"address": 0, "type": "string", "value": "x"}]),
            device("c", registers=[{"address": 0, "type": "int16", "length": 2, "value": 1}]),
            device("d", registers=[{"adress": 3, "address": 0, "type": "int16", "value": 1}]),
            device("e", host="${SIM_HOST}"),
        ],
    }
    assert problems(tmp_path, doc) == [
        "devices[4].host: environment variable SIM_HOST is not set; export SIM_HOST=... "
        "before starting, or give a default as ${SIM_HOST:-value}",
        "devices[0].registers[0].address: float32 at 65535 needs 2 registers and runs past "
        "the last address (65535)",
        "devices[1].registers[0].length: a string register needs `length` (registers it occupies)",
        "devices[2].registers[0].length: only string registers have a length; int16 has a "
        "fixed size",
        "devices[3].registers[0].adress: unknown field; did you mean 'address'? allowed here: "
        "table, address, type, order, length, scale, offset, value",
    ]


WAVE_HINT = (
    "expected a number, a text, or a waveform with `wave:` one of constant, sine, ramp, "
    "counter, random_walk"
)


@pytest.mark.parametrize(
    ("register", "message"),
    [
        ({"type": "int16", "value": {"wave": "square"}}, f"value: {WAVE_HINT}"),
        (
            {"type": "int16", "value": True},
            "value: true/false is for bool registers (table coil or discrete); an int16 "
            "register needs a number (got True)",
        ),
        ({"type": "int16", "value": "12"}, "value: an int16 register needs a number, not text"),
        ({"type": "uint16", "value": "12"}, "value: a uint16 register needs a number, not text"),
        (
            {"type": "string", "length": 2, "value": 5},
            "value: a string register needs a constant text value",
        ),
        (
            {"type": "string", "length": 1, "value": "abc"},
            "value: 'abc' does not fit in 1 registers",
        ),
        (
            {"type": "string", "length": 2, "value": "€"},
            "value: text must be Latin-1 (one byte per character)",
        ),
        (
            {"type": "string", "length": 2, "value": "x", "scale": 2},
            "scale: a string register cannot have scale or offset",
        ),
        ({"type": "int16", "scale": 0, "value": 1}, "scale: must not be 0"),
        ({"type": "int16", "value": float("nan")}, "value: must be a finite number (got nan)"),
        (
            {"type": "float32", "value": {"wave": "counter"}},
            "value: a counter needs an integer register type, not float32",
        ),
        (
            {"type": "int16", "value": {"wave": "sine", "amplitude": 1, "period": 0}},
            "value.period: Input should be greater than 0 (got 0)",
        ),
        (
            {"type": "int16", "value": {"wave": "sine", "period": 1}},
            "value.amplitude: required field is missing",
        ),
        (
            {"type": "int16", "value": {"wave": "ramp", "slope": -1, "max": 5}},
            "value.slope: a ramp with `max` needs a positive slope to reach it",
        ),
        (
            {"type": "int16", "value": {"wave": "ramp", "start": 5, "slope": 1, "max": 5}},
            "value.max: must be greater than start (5.0)",
        ),
        (
            {
                "type": "int16",
                "value": {"wave": "random_walk", "start": 5, "step": 1, "min": 0, "max": 4},
            },
            "value.start: must lie within min..max (0.0..4.0)",
        ),
        (
            {
                "type": "int16",
                "value": {"wave": "random_walk", "start": 0, "step": 1, "min": 1, "max": 0},
            },
            "value.min: must not exceed max (0.0)",
        ),
        (
            {"type": "int16", "value": {"wave": "counter", "step": 0}},
            "value.step: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            {"type": "int24", "value": 1},
            "type: Input should be 'int16', 'uint16', 'int32', 'uint32', 'int64', 'uint64', "
            "'float32', 'float64', 'string' or 'bool' (got 'int24')",
        ),
        (
            {"type": "int16", "order": "ABDC", "value": 1},
            "order: Input should be 'ABCD', 'CDAB', 'BADC' or 'DCBA' (got 'ABDC')",
        ),
    ],
)
def test_register_errors(tmp_path: Path, register: dict[str, Any], message: str) -> None:
    doc = one_register(address=0, **register)
    assert problems(tmp_path, doc) == [f"devices[0].registers[0].{message}"]


def test_same_unit_on_same_port(tmp_path: Path) -> None:
    doc = {
        "kind": "sim",
        "devices": [
            device("a", port=5020, unit_id=3),
            device("b", port=5021, unit_id=3),  # another port: fine
            device("c", port=5020, unit_id=3),
        ],
    }
    assert problems(tmp_path, doc) == [
        "devices[2].unit_id: unit 3 on 127.0.0.1:5020 is already served by devices[0] (a)"
    ]


def test_port_zero_devices_do_not_share(tmp_path: Path) -> None:
    doc = {"kind": "sim", "devices": [device("a"), device("b")]}
    config = load_sim_config(write(tmp_path, doc), env={})
    assert config.devices[0].listener_key() != config.devices[1].listener_key()


def test_same_unit_in_one_gateway(tmp_path: Path) -> None:
    doc = {"kind": "sim", "devices": [device("a", gateway="gw"), device("b", gateway="gw")]}
    assert problems(tmp_path, doc) == [
        "devices[1].unit_id: unit 1 on 127.0.0.1:0 (gateway gw) is already served by devices[0] (a)"
    ]


def test_gateway_members_share_host_and_port(tmp_path: Path) -> None:
    doc = {
        "kind": "sim",
        "devices": [device("a", gateway="gw"), device("b", gateway="gw", port=5020, unit_id=2)],
    }
    assert problems(tmp_path, doc) == [
        "devices[1].port: gateway 'gw' is at 127.0.0.1:0 (devices[0]); devices of one gateway "
        "need the same host and port"
    ]


def test_duplicate_device_name(tmp_path: Path) -> None:
    doc = {"kind": "sim", "devices": [device("a"), device("a")]}
    assert problems(tmp_path, doc) == [
        "devices[1].name: duplicate device name 'a' (first at devices[0])"
    ]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"kind": "edge", "devices": [device()]}, "kind: Input should be 'sim' (got 'edge')"),
        (
            {"kind": "sim", "devices": []},
            "devices: List should have at least 1 item after validation, not 0",
        ),
        (
            {"kind": "sim", "devices": [device(unit_id=248)]},
            "devices[0].unit_id: Input should be less than or equal to 247 (got 248)",
        ),
    ],
)
def test_top_level_errors(tmp_path: Path, doc: dict[str, Any], message: str) -> None:
    assert problems(tmp_path, doc) == [message]


def test_device_name_is_an_ident(tmp_path: Path) -> None:
    # The wording belongs to config.base.Ident; only the location is ours.
    [message] = problems(tmp_path, {"kind": "sim", "devices": [device(name="a b")]})
    assert message.startswith("devices[0].name: ")
    assert "'a b'" in message


def test_error_render_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"kind": "sim", "devices": [device(unit_id=-1)]})
    with pytest.raises(ConfigError) as caught:
        load_sim_config(path, env={})
    assert caught.value.render() == (
        f"{path}: 1 problem\n"
        "  devices[0].unit_id: Input should be greater than or equal to 0 (got -1)"
    )


def test_schema_describes_every_field() -> None:
    schema = sim_json_schema()
    assert schema["title"] == "SimConfig"
    missing = [
        f"{model}.{name}"
        for model, body in [("SimConfig", schema), *schema["$defs"].items()]
        for name, prop in body.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert missing == []
    assert set(schema["$defs"]) >= {"SimDevice", "SimRegister", "SineWave", "RandomWalkWave"}


def test_model_is_frozen_and_strict() -> None:
    config = SimConfig.model_validate({"kind": "sim", "devices": [device()]})
    with pytest.raises(ValueError, match="frozen"):
        config.devices[0].port = 5
