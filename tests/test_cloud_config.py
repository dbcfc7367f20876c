"""The ``kind: cloud`` file: every problem reported at once, with its field path."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.cloud import CloudConfig, InfluxV1, InfluxV2, cloud_json_schema, load_cloud_config
from config.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parent.parent / "config" / "examples"


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    path = tmp_path / "cloud.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_cloud_config(path, env or {})
    return info.value.render().removeprefix(f"{path}: ")


def test_unknown_field_names_the_close_match(tmp_path: Path) -> None:
    text = "kind: cloud\nmqtt: {prot: 1884}\ninflux: {api: v1, url: 'http://h:8086', database: d}\n"
    assert problems(tmp_path, text) == (
        "1 problem\n"
        "  mqtt.prot: unknown field; did you mean 'port'? allowed here: host, port, username, "
        "password, keepalive, topic_root, tls, client_id, group, session_expiry, receive_maximum"
    )


def test_v2_without_token_and_other_problems_together(tmp_path: Path) -> None:
    text = (
        "kind: cloud\n"
        "influx: {api: v2, url: 'ftp://h', org: acme, bucket: b}\n"
        "batch: {max_points: 0}\n"
    )
    assert problems(tmp_path, text) == (
        "3 problems\n"
        "  influx.url: expected an http:// or https:// URL with a host (got 'ftp://h')\n"
        "  influx.token: required field is missing\n"
        "  batch.max_points: Input should be greater than or equal to 1 (got 0)"
    )


def test_unknown_api_and_unset_secret(tmp_path: Path) -> None:
    text = (
        "kind: cloud\n"
        "mqtt: {password: '${MQTT_PASSWORD}'}\n"
        "influx: {api: v3, url: 'http://h:8086'}\n"
    )
    assert problems(tmp_path, text) == (
        "2 problems\n"
        "  mqtt.password: environment variable MQTT_PASSWORD is not set; export "
        "MQTT_PASSWORD=... before starting, or give a default as ${MQTT_PASSWORD:-value}\n"
        "  influx: `api` must be v1 (InfluxDB 1.x /write) or v2 (/api/v2/write: InfluxDB 2.x/3.x, "
        "VictoriaMetrics)"
    )


def test_v1_credentials_come_in_pairs(tmp_path: Path) -> None:
    text = "kind: cloud\ninflux: {api: v1, url: 'http://h:8086', database: d, username: u}\n"
    assert problems(tmp_path, text) == (
        "1 problem\n  influx: set both username and password, or neither"
    )


def test_examples_and_defaults() -> None:
    v1 = load_cloud_config(EXAMPLES / "cloud-influx1.yaml", {})
    assert isinstance(v1.influx, InfluxV1)
    assert (v1.influx.database, v1.influx.create_database) == ("fieldlink", False)
    assert (v1.mqtt.client_id, v1.mqtt.session_expiry) == ("fieldlink-ingester", 3600)
    v2 = load_cloud_config(EXAMPLES / "cloud-v2.yaml", {"INFLUX_TOKEN": "s3cret"})
    assert isinstance(v2.influx, InfluxV2)
    assert v2.influx.token == "s3cret"
    minimal = CloudConfig.model_validate(
        {"kind": "cloud", "influx": {"api": "v1", "url": "http://h:8086/", "database": "d"}}
    )
    assert minimal.influx.url == "http://h:8086"
    assert minimal.influx.measurement == "readings"
    assert (minimal.batch.max_points, minimal.batch.max_delay) == (5000, 0.5)
    assert minimal.batch.writes_in_flight == 2
    assert (minimal.ingest.max_future, minimal.ingest.max_age) == (300, None)


def test_every_field_of_the_schema_has_a_description() -> None:
    schema = cloud_json_schema()
    missing = [
        f"{name}.{field}"
        for name, model in schema["$defs"].items()
        for field, spec in model.get("properties", {}).items()
        if "description" not in spec
    ]
    missing += [f for f, spec in schema["properties"].items() if "description" not in spec]
    assert missing == []
