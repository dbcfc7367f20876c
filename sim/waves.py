"""Waveforms as functions of time: ``t`` (seconds since the plant started) → value.

They are evaluated only when a request reads the register, so a map with thousands of
waveforms costs nothing until polled. Every function is deterministic in ``t`` except the
random walk, which is deterministic in its seed and the sequence of moves it has made.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from config.sim import (
    ConstantWave,
    CounterWave,
    Number,
    RampWave,
    RandomWalkWave,
    SineWave,
    Wave,
)

ValueAt = Callable[[float], int | float]


def value_function(wave: Wave | Number) -> ValueAt | None:
    """A function of time for ``wave``, or None when the value never changes.

    Text constants are not waves; callers handle them (they are always static).
    """
    if isinstance(wave, int | float | ConstantWave):
        return None
    if isinstance(wave, SineWave):
        return _sine(wave)
    if isinstance(wave, RampWave):
        return _ramp(wave)
    if isinstance(wave, CounterWave):
        return _counter(wave)
    return RandomWalk(wave)


def _sine(wave: SineWave) -> ValueAt:
    omega = 2.0 * math.pi / wave.period
    phase = math.radians(wave.phase)
    amplitude, offset = wave.amplitude, wave.offset
    sin = math.sin

    def at(t: float) -> float:
        return offset + amplitude * sin(omega * t + phase)

    return at


def _ramp(wave: RampWave) -> ValueAt:
    start, slope, top = wave.start, wave.slope, wave.max
    if top is None:
        return lambda t: start + slope * t
    span = top - start

    def at(t: float) -> float:
        # A saw-tooth: `max` itself is never reported, the ramp restarts at `start` there.
        return start + (slope * t) % span

    return at


def _counter(wave: CounterWave) -> ValueAt:
    start, step, interval = wave.start, wave.step, wave.interval

    def at(t: float) -> int:
        # Integer arithmetic throughout, so 64-bit counters stay exact; wrapping at the
        # register type's maximum is done by the encoder, which knows the type.
        return start + step * math.floor(t / interval)

    return at


class RandomWalk:
    """A bounded random walk making one move every ``interval`` seconds.

    The state advances move by move up to the requested time, so the value at a given time
    does not depend on how often it was read: two runs with the same seed agree. Time going
    backwards (an injected clock) keeps the current value rather than replaying history.
    """

    __slots__ = ("_hi", "_interval", "_lo", "_moves", "_rng", "_step", "_value")

    def __init__(self, wave: RandomWalkWave) -> None:
        self._rng = random.Random(wave.seed)
        self._value = wave.start
        self._step = wave.step
        self._lo, self._hi = wave.min, wave.max
        self._interval = wave.interval
        self._moves = 0

    def __call__(self, t: float) -> float:
        due = math.floor(t / self._interval)
        if due > self._moves:
            uniform, step, lo, hi = self._rng.uniform, self._step, self._lo, self._hi
            value = self._value
            for _ in range(due - self._moves):
                value = min(hi, max(lo, value + uniform(-step, step)))
            self._value = value
            self._moves = due
        return self._value
