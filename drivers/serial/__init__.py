"""The serial-line instrument driver: devices that print lines or answer ASCII commands."""
