"""Address notation: what is written in a config file → (table, 0-based protocol address).

Datasheets write addresses in three ways, and a device's ``address_base`` says which one its
points use, so addresses can be pasted from the datasheet unchanged:

=============  =====================================================  ==========================
``0``          the protocol address, as it travels in the request     ``0`` = first register
``1``          one more than the protocol address ("register 1")      ``1`` = first register
``modicon``    table prefix + 1-based number, 5 or 6 digits           ``40001`` = holding 0
=============  =====================================================  ==========================

Modicon prefixes: ``0`` coil, ``1`` discrete input, ``3`` input register, ``4`` holding
register. The 5-digit form reaches number 9999 (``49999`` = holding 9998), the 6-digit form
number 65536 (``465536`` = holding 65535). In Modicon notation the table follows from the
address, so ``table`` may be left out; given, it must agree.

YAML reads a number with leading zeros as octal (``00010`` is 8), which would silently move a
coil. Coil addresses (prefix ``0``) must therefore be written as quoted text (``"00010"``),
and text of 5 or 6 digits is read exactly as written.
"""

from __future__ import annotations

from typing import Final, Literal

AddressBase = Literal[0, 1, "modicon"]
Table = Literal["coil", "discrete", "holding", "input"]

#: Tables holding one bit per address (FC1/FC2) and 16-bit registers (FC3/FC4).
BIT_TABLES: Final = frozenset({"coil", "discrete"})
REGISTER_TABLES: Final = frozenset({"holding", "input"})

#: Modicon prefix digit → table, and back.
MODICON_TABLES: Final[dict[int, Table]] = {0: "coil", 1: "discrete", 3: "input", 4: "holding"}
MODICON_PREFIX: Final[dict[str, int]] = {t: p for p, t in MODICON_TABLES.items()}

LAST_ADDRESS: Final = 65535


class AddressError(ValueError):
    """An address that cannot be read in the device's notation; ``field`` is where to look."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


def resolve(
    base: AddressBase,
    address: int | str,
    table: Table | None,
    count: int = 1,
    what: str = "value",
) -> tuple[Table, int]:
    """The table and 0-based protocol address of a point written as ``address`` in notation
    ``base``; ``count`` registers (or bits) from there must exist. ``what`` names the value in
    messages (e.g. ``uint32``)."""
    if base == "modicon":
        found, protocol = _modicon(address, table)
    else:
        if isinstance(address, str):
            raise AddressError(
                "address",
                f"{address!r}: a quoted address is read as Modicon notation, which needs "
                "`address_base: modicon` on the device; otherwise write a number",
            )
        found = table or "holding"
        protocol = address - base
        if protocol < 0:
            raise AddressError(
                "address",
                f"with address_base 1 addresses start at 1 (the first {_unit(found)}), got 0",
            )
    if protocol + count - 1 > LAST_ADDRESS:
        if base == 0 and protocol > LAST_ADDRESS:
            raise AddressError(
                "address",
                f"{protocol} is past the last {_unit(found)} (65535); datasheet numbers such "
                "as 40001 or 400001 need `address_base: modicon` on the device",
            )
        last = f"{MODICON_PREFIX[found]}65536" if base == "modicon" else str(LAST_ADDRESS + base)
        where = address if isinstance(address, int) else repr(address)
        raise AddressError(
            "address", f"{what} at {where} runs past the last {_unit(found)} ({last})"
        )
    return found, protocol


def _unit(table: str) -> str:
    return {"coil": "coil", "discrete": "discrete input"}.get(table, "register")


def _modicon(address: int | str, table: Table | None) -> tuple[Table, int]:
    if isinstance(address, str):
        digits = address.strip()
        if not digits.isdigit() or len(digits) not in (5, 6):
            raise AddressError(
                "address",
                f"{address!r} is not a Modicon address: 5 or 6 digits, e.g. '40001' or '400001'",
            )
        width = len(digits)
        number = int(digits)
    else:
        number = address
        if number < 10000:
            raise AddressError(
                "address",
                f"{number}: write Modicon coil addresses as quoted text, e.g. '00010' (YAML reads "
                "00010 as the octal number 8)",
            )
        width = 5 if number < 100000 else 6
    if width == 5:
        prefix, offset, top = number // 10000, number % 10000, 9999
    else:
        prefix, offset, top = number // 100000, number % 100000, 65536
    shown = f"{number:0{width}d}"
    found = MODICON_TABLES.get(prefix)
    if found is None or number >= 10**width:
        raise AddressError(
            "address",
            f"{shown} is not a Modicon address: the first digit names the table "
            "(0 coil, 1 discrete input, 3 input register, 4 holding register)",
        )
    if not 1 <= offset <= top:
        raise AddressError(
            "address",
            f"{shown}: Modicon numbers start at 1 and reach {top} in the {width}-digit form",
        )
    if table is not None and table != found:
        raise AddressError(
            "table",
            f"address {shown} is a {_name(found)} in Modicon notation ({prefix}xxxx), "
            f"but table is {table!r}; leave `table` out or fix the address",
        )
    return found, offset - 1


def _name(table: Table) -> str:
    return {
        "coil": "coil",
        "discrete": "discrete input",
        "input": "input register",
        "holding": "holding register",
    }[table]


def modicon(table: Table, protocol: int, width: int = 5) -> str:
    """The Modicon form of a protocol address (``("holding", 0)`` → ``"40001"``)."""
    if width not in (5, 6):
        raise ValueError("width must be 5 or 6")
    top = 9999 if width == 5 else 65536
    if not 0 <= protocol < top:
        raise ValueError(f"protocol address {protocol} has no {width}-digit Modicon form")
    return f"{MODICON_PREFIX[table]}{protocol + 1:0{width - 1}d}"
