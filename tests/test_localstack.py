"""The local services really start, answer, keep data across restarts and stop cleanly."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import InfluxDatabase, ServiceFactory, async_wait_for, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from fieldlink.localstack import (
    BinaryNotFoundError,
    InfluxDB1,
    Mosquitto,
    PortInUseError,
    Service,
    ServiceError,
    VictoriaMetrics,
    free_port,
    http_request,
)


class Inbox:
    """Messages a paho client received, filled from paho's network thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[mqtt.MQTTMessage] = []

    def add(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(message)

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [bytes(m.payload) for m in self.messages]


@contextmanager
def mqtt_client(broker: Mosquitto, inbox: Inbox | None = None) -> Iterator[mqtt.Client]:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    if inbox is not None:
        client.on_message = inbox.add
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        wait_for(client.is_connected, message=f"MQTT connect to {broker.host}:{broker.port}")
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def subscribe(client: mqtt.Client, topic: str) -> None:
    done = threading.Event()
    client.on_subscribe = lambda *_: done.set()
    client.subscribe(topic, qos=1)
    wait_for(done.is_set, message=f"SUBACK for {topic}")


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_mosquitto_delivers_a_published_message(mosquitto: Mosquitto, unique_id: str) -> None:
    topic = f"test/{unique_id}"
    inbox = Inbox()
    with mqtt_client(mosquitto, inbox) as subscriber, mqtt_client(mosquitto) as publisher:
        subscribe(subscriber, topic)
        publisher.publish(topic, b"hello", qos=1).wait_for_publish(timeout=5)
        assert wait_for(inbox.payloads, message="message on subscriber") == [b"hello"]


def test_influxdb1_line_protocol_write_reads_back_with_influxql(influx_db: InfluxDatabase) -> None:
    influx, db = influx_db
    ts = time.time_ns()
    status, body = http_request(
        "POST",
        f"{influx.url}/write",
        params={"db": db, "precision": "ns"},
        body=f'power,device=meter-1 watts=1234.5,count=7i,state="ok" {ts}'.encode(),
    )
    assert (status, body) == (204, b"")

    result = influx.query("SELECT * FROM power", db=db)

    [series] = result["results"][0]["series"]
    assert series["name"] == "power"
    assert series["columns"] == ["time", "count", "device", "state", "watts"]
    # epoch=ns returns the timestamp exactly as written.
    assert series["values"] == [[ts, 7, "meter-1", "ok", 1234.5]]


def test_influxdb1_query_errors_are_raised(influx_db: InfluxDatabase) -> None:
    influx, db = influx_db
    with pytest.raises(ServiceError, match="database not found"):
        influx.query("SELECT * FROM power", db=f"{db}_missing")


def test_victoria_stores_influx_v2_writes_as_measurement_field_series(
    victoria: VictoriaMetrics, unique_id: str
) -> None:
    ts = time.time_ns()
    line = f"{unique_id},device=meter-1,site=north watts=1234.5,count=7i {ts}"
    status, _ = http_request(
        "POST",
        f"{victoria.url}/api/v2/write",
        params={"org": "x", "bucket": "y", "precision": "ns"},
        body=line.encode(),
    )
    assert status == 204
    selector = f'{{__name__=~"{unique_id}_.*"}}'

    def both_fields() -> list[dict[str, Any]]:
        rows = victoria.export(selector)
        return rows if len(rows) == 2 else []

    rows = wait_for(both_fields, message=f"two series for {selector} in VictoriaMetrics")

    by_name = {row["metric"]["__name__"]: row for row in rows}
    assert set(by_name) == {f"{unique_id}_watts", f"{unique_id}_count"}
    for row in rows:
        # Tags become labels; VM 1.79 ignores the v2 `bucket`, so there is no `db` label.
        assert {k: v for k, v in row["metric"].items() if k != "__name__"} == {
            "device": "meter-1",
            "site": "north",
        }
        # Timestamps are stored in milliseconds.
        assert row["timestamps"] == [ts // 1_000_000]
    assert by_name[f"{unique_id}_watts"]["values"] == [1234.5]
    assert by_name[f"{unique_id}_count"]["values"] == [7]


def test_victoria_db_query_arg_becomes_db_label(victoria: VictoriaMetrics, unique_id: str) -> None:
    status, _ = http_request(
        "POST",
        f"{victoria.url}/api/v2/write",
        params={"org": "x", "bucket": "y", "db": "fieldlink", "precision": "ns"},
        body=f"{unique_id},device=d1 v=1 {time.time_ns()}".encode(),
    )
    assert status == 204

    [row] = wait_for(lambda: victoria.export(f"{unique_id}_v"), message="point in VM")

    assert row["metric"] == {"__name__": f"{unique_id}_v", "db": "fieldlink", "device": "d1"}


def test_mosquitto_restarts_on_the_same_port_with_retained_messages(
    private_mosquitto: Mosquitto, unique_id: str
) -> None:
    broker = private_mosquitto
    port = broker.port
    topic = f"test/{unique_id}"
    with mqtt_client(broker) as client:
        client.publish(topic, b"kept", qos=1, retain=True).wait_for_publish(timeout=5)

    broker.stop()
    assert not broker.is_running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((broker.host, port), timeout=2).close()

    broker.start()

    assert broker.is_running
    assert broker.port == port
    inbox = Inbox()
    with mqtt_client(broker, inbox) as client:
        subscribe(client, topic)
        assert wait_for(inbox.payloads, message="retained message") == [b"kept"]


def test_influxdb1_keeps_data_across_restart(private_influxdb1: InfluxDB1) -> None:
    influx = private_influxdb1
    influx.create_database("outage")
    influx.write("m v=1 1000000000", db="outage")

    influx.restart()

    result = influx.query("SELECT v FROM m", db="outage")
    assert result["results"][0]["series"][0]["values"] == [[1_000_000_000, 1.0]]


def test_paused_service_is_frozen_and_resumes(private_mosquitto: Mosquitto) -> None:
    broker = private_mosquitto
    pid = broker.pid
    assert pid is not None

    broker.pause()
    assert broker.is_paused
    assert _proc_state(pid) == "T"

    broker.resume()
    assert not broker.is_paused
    assert _proc_state(pid) != "T"
    with mqtt_client(broker):
        pass


def test_stopping_a_paused_service_does_not_hang(private_mosquitto: Mosquitto) -> None:
    private_mosquitto.stop_timeout = 5
    private_mosquitto.pause()
    started = time.monotonic()

    private_mosquitto.stop()

    assert not private_mosquitto.is_running
    # SIGTERM is delivered after SIGCONT; a SIGKILL fallback would take stop_timeout.
    assert time.monotonic() - started < 4


def _proc_state(pid: int) -> str:
    # /proc/PID/stat: "pid (comm) state ..."; comm may contain spaces, so split after ")".
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_context_manager_stops_process_and_removes_its_temp_dir() -> None:
    with Mosquitto() as broker:
        pid = broker.pid
        data_dir = broker.data_dir
        assert pid is not None
        assert data_dir.is_dir()

    assert not broker.is_running
    assert not data_dir.exists()
    assert not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize(
    ("cls", "name", "package"),
    [
        (Mosquitto, "mosquitto", "mosquitto"),
        (InfluxDB1, "influxd", "influxdb"),
        (VictoriaMetrics, "victoria-metrics", "victoria-metrics"),
    ],
)
def test_missing_binary_says_how_to_install_it(
    tmp_path: Path, cls: type[Service], name: str, package: str
) -> None:
    missing = tmp_path / "bin" / name
    expected = f"{name} not found: install it with 'sudo apt-get install {package}' (Debian/Ubuntu)"

    with pytest.raises(BinaryNotFoundError, match=re.escape(expected)) as caught:
        cls(binary=str(missing), data_dir=tmp_path / "data")

    assert str(missing) in str(caught.value)
    assert not (tmp_path / "data").exists()


def test_startup_failure_reports_the_log_tail(tmp_path: Path) -> None:
    broker = Mosquitto(data_dir=tmp_path, extra_config="no_such_option 1")

    with pytest.raises(ServiceError, match="exited with code") as caught:
        broker.start()

    assert "no_such_option" in str(caught.value)
    assert str(broker.log_path) in str(caught.value)
    broker.close()


def test_taken_fixed_port_is_reported_not_mistaken_for_ready(
    tmp_path: Path, make_service: ServiceFactory
) -> None:
    # Someone else's listener on the port: the service must fail, even though a TCP
    # connect to the port would succeed.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]

        with pytest.raises(PortInUseError, match=r"(?i)address already in use"):
            make_service(Mosquitto, port=port)


def test_no_child_is_left_when_the_parent_is_killed(tmp_path: Path) -> None:
    # The atexit hook cannot run on SIGKILL; the parent-death signal must do the job.
    pid_file = tmp_path / "pid"
    script = (
        "import sys, time\n"
        "from fieldlink.localstack import Mosquitto\n"
        f"broker = Mosquitto(data_dir={str(tmp_path / 'broker')!r}).start()\n"
        f"open({str(pid_file)!r}, 'w').write(str(broker.pid))\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text(), message="child pid")
        child = int(pid_file.read_text())
        parent.kill()
        parent.wait()
        # Gone, or a zombie if this container's init does not reap orphans.
        wait_for(
            lambda: not Path(f"/proc/{child}").exists() or _proc_state(child) == "Z",
            message=f"mosquitto {child} to die with its parent",
            ignore=(FileNotFoundError,),
        )
    finally:
        parent.kill()
        parent.wait()


def test_http_request_returns_error_statuses(victoria: VictoriaMetrics) -> None:
    status, body = http_request("GET", f"{victoria.url}/api/v1/export", params={"match[]": "{"})
    assert status == 400
    assert b"cannot parse" in body


def test_wait_for_names_what_never_happened() -> None:
    with pytest.raises(AssertionError, match=r"0.1s waiting for: the moon \(last value: 0\)"):
        wait_for(lambda: 0, timeout=0.1, message="the moon")


async def test_async_wait_for_accepts_coroutines_and_ignored_errors() -> None:
    calls: list[int] = []

    async def third_time_lucky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return "ok"

    assert await async_wait_for(third_time_lucky, ignore=(ConnectionError,)) == "ok"
    calls.clear()
    with pytest.raises(AssertionError, match=r"last error: ConnectionError\('not yet'\)"):
        await async_wait_for(third_time_lucky, timeout=0.01, interval=0.1, ignore=(OSError,))
