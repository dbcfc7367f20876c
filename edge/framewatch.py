"""Frame trouble made visible: a device's frame counters, logged when a kind starts and stops.

Drivers that cut frames out of bytes (serial) count per device what went wrong: checksum
failures, unparsable frames, noise and overlong bytes dropped
(:class:`~drivers.base.FrameCounting`). Every bad frame already yields bad readings with their
reason; this module tells the installer reading the agent's log, the way the bus workers do
for timeouts and lost links — on state changes, never one line per frame:

* a kind of trouble **starts** (its counter grew, the device was clean of it): one warning
  with what the latest one looked like;
* it **stops** once ``recover_after`` good frames came after the last one: one info line with
  the total so far. An intermittent fault (every 10th frame) so stays one warning, not two
  lines every ten frames;
* at agent stop, :meth:`FrameWatch.summary` logs every device's totals.

The counters are sampled (every ``period`` seconds, default 1 s), so a warning comes at most
one period after the frame; sampling costs a few integer comparisons per device and works the
same for streaming and polled devices, whoever owns their bus.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from drivers.base import FrameCounting

log = logging.getLogger("fieldlink.edge")

#: Good frames after the last trouble of a kind before it counts as stopped.
RECOVER_AFTER = 20


@dataclass
class _Kind:
    count: int = 0
    failing: bool = False
    #: The device's good-frame count when this kind last grew.
    good_at: int = 0


@dataclass
class _Watched:
    name: str
    program: FrameCounting
    kinds: dict[str, _Kind] = field(default_factory=dict)


class FrameWatch:
    def __init__(
        self,
        devices: Sequence[tuple[str, FrameCounting]],
        *,
        period: float = 1.0,
        recover_after: int = RECOVER_AFTER,
    ) -> None:
        self._devices = [_Watched(name, program) for name, program in devices]
        self._period = period
        self._recover_after = recover_after

    def __len__(self) -> int:
        return len(self._devices)

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            await asyncio.sleep(self._period)
            self.sample()

    def sample(self) -> None:
        for device in self._devices:
            try:
                counts = device.program.frame_counts()
            except Exception:  # a bug in one driver's counters must not stop the agent
                log.exception("device %s: reading its frame counters failed", device.name)
                continue
            for kind, count in counts.trouble.items():
                state = device.kinds.setdefault(kind, _Kind())
                if count > state.count:
                    if not state.failing:
                        state.failing = True
                        latest = counts.latest.get(kind)
                        log.warning(
                            "device %s: %s (%d so far%s); counted, not logged each time, "
                            "until %d good frames in a row",
                            device.name,
                            kind,
                            count,
                            f"; latest: {latest}" if latest else "",
                            self._recover_after,
                        )
                    state.count = count
                    state.good_at = counts.good
                elif state.failing and counts.good - state.good_at >= self._recover_after:
                    state.failing = False
                    log.info(
                        "device %s: no more %s (%d good frames since the last; %d in all)",
                        device.name,
                        kind,
                        counts.good - state.good_at,
                        count,
                    )

    def summary(self) -> None:
        """Log every device's totals (at agent stop)."""
        self.sample()
        for device in self._devices:
            try:
                counts = device.program.frame_counts()
            except Exception:
                log.exception("device %s: reading its frame counters failed", device.name)
                continue
            parts = [f"{counts.good} good frames"]
            parts += [f"{n} {kind}" for kind, n in {**counts.trouble, **counts.info}.items()]
            log.info("device %s: %s", device.name, ", ".join(parts))
