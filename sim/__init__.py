"""Simulated Modbus TCP devices: a register map per unit id, constants and waveforms.

Our own small asyncio server rather than pymodbus's: it is fast enough for benchmarks and,
being independent, really tests the pymodbus-based agent. See ``sim/README.md``.
"""

from config.sim import SimConfig, SimDevice, SimRegister, load_sim_config, sim_json_schema
from sim.server import DeviceStats, SimPlant, SimStartError

__all__ = [
    "DeviceStats",
    "SimConfig",
    "SimDevice",
    "SimPlant",
    "SimRegister",
    "SimStartError",
    "load_sim_config",
    "sim_json_schema",
]
