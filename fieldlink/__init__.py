"""fieldlink: the asset layer from field devices to InfluxDB. See README.md."""

__version__ = "0.1.0"
