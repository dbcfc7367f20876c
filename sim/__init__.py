"""Simulated Modbus devices: a register map per unit id, constants and waveforms, served over
Modbus TCP, RTU over TCP, or RTU/ASCII on a pseudo-terminal, with injectable faults.

Our own small asyncio server rather than pymodbus's: it is fast enough for benchmarks and,
being independent, really tests the pymodbus-based agent. See ``sim/README.md``.
"""

from config.sim import SimConfig, SimDevice, SimRegister, load_sim_config, sim_json_schema
from sim.server import BusStats, DeviceStats, SerialEndpoint, SimPlant, SimStartError

__all__ = [
    "BusStats",
    "DeviceStats",
    "SerialEndpoint",
    "SimConfig",
    "SimDevice",
    "SimPlant",
    "SimRegister",
    "SimStartError",
    "load_sim_config",
    "sim_json_schema",
]
