"""Building blocks shared by every config model."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from wire.topics import ID_PATTERN


class StrictModel(BaseModel):
    """Unknown fields are errors, never silently ignored; values are not coerced from strings."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: A name that becomes an MQTT topic level or an InfluxDB tag value.
Ident = Annotated[
    str,
    Field(
        pattern=ID_PATTERN,
        description="Letters, digits and _ . : - ; starts with a letter or digit; at most 128.",
    ),
]
