"""Fixtures that run the real backing services: Mosquitto, InfluxDB 1.x, VictoriaMetrics.

The session-wide ``mosquitto``, ``influxdb1`` and ``victoria`` are shared by every test, so
tests isolate themselves by name (``unique_id`` for topics, metrics and labels, ``influx_db``
for a database of their own) and must not stop or pause them. A test that simulates an
outage takes ``private_mosquitto``/``private_influxdb1``/``private_victoria`` or builds one
with ``make_service`` instead.

A missing binary makes the fixture fail with the apt-get command that installs it, rather
than skip: a silently skipped integration test looks exactly like a passing one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import InfluxDatabase, ServiceFactory

from fieldlink.localstack import InfluxDB1, Mosquitto, VictoriaMetrics


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A Mosquitto 2 broker shared by the session (``.host``, ``.port``)."""
    with Mosquitto(data_dir=tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture(scope="session")
def influxdb1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1]:
    """An InfluxDB 1.x server shared by the session (``.url``, ``.query()``, ``.write()``)."""
    with InfluxDB1(data_dir=tmp_path_factory.mktemp("influxdb1")) as server:
        yield server


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics server shared by the session (``.url``, ``.export()``)."""
    with VictoriaMetrics(data_dir=tmp_path_factory.mktemp("victoria")) as server:
        yield server


@pytest.fixture
def unique_id(request: pytest.FixtureRequest) -> str:
    """A name unique to this test run, safe in topics, metric names and database names."""
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    return f"{stem}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def influx_db(influxdb1: InfluxDB1, unique_id: str) -> Iterator[InfluxDatabase]:
    """A fresh database on the shared InfluxDB: ``(service, name)``, dropped afterwards."""
    influxdb1.create_database(unique_id)
    yield InfluxDatabase(influxdb1, unique_id)
    influxdb1.drop_database(unique_id)


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[ServiceFactory]:
    """Start services this test owns: ``make_service(Mosquitto, extra_config=...)``."""
    factory = ServiceFactory(tmp_path)
    yield factory
    factory.close_all()


@pytest.fixture
def private_mosquitto(make_service: ServiceFactory) -> Mosquitto:
    """A broker of this test's own, free to be stopped, restarted or paused."""
    return make_service(Mosquitto)


@pytest.fixture
def private_influxdb1(make_service: ServiceFactory) -> InfluxDB1:
    """An InfluxDB 1.x of this test's own, free to be stopped, restarted or paused."""
    return make_service(InfluxDB1)


@pytest.fixture
def private_victoria(make_service: ServiceFactory) -> VictoriaMetrics:
    """A VictoriaMetrics of this test's own, free to be stopped, restarted or paused."""
    return make_service(VictoriaMetrics)


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents spool under $XDG_STATE_HOME by default: give every test (and the processes it
    starts) its own, so no test reads another's spool or the user's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
