"""Sampling a benchmarked process with py-spy, and the summary that goes in a report.

``py-spy record --format raw --function`` writes one line per distinct stack,
``frame;frame;... count``, each frame a function (at its first line, so all the samples of
one function add up).
:func:`summarise` turns that into the share of samples each function is on top of the stack
(*self*) and anywhere on it (*inclusive*), which is what a reader of a benchmark wants to
know: where the time goes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

#: Functions of the interpreter's, asyncio's and threading's plumbing, left out of the
#: inclusive list because they are on nearly every stack and say nothing.
_PLUMBING = frozenset(
    {
        "<module>",
        "_run_module_as_main",
        "_run_code",
        "run",
        "main",
        "_run",
        "Runner.run",
        "BaseEventLoop.run_until_complete",
        "BaseEventLoop.run_forever",
        "BaseEventLoop._run_once",
        "Handle._run",
        "Thread.run",
        "Thread._bootstrap",
        "Thread._bootstrap_inner",
    }
)


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def start_record(pid: int, seconds: float, out: Path, rate: int = 100) -> subprocess.Popen[bytes]:
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
         "--rate", str(rate), "--nonblocking", "--function", "--format", "raw",
         "--output", str(out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


@dataclass(frozen=True)
class Profile:
    samples: int
    self_share: list[tuple[str, float]]
    inclusive_share: list[tuple[str, float]]

    def render(self, top: int = 15) -> str:
        lines = [f"{self.samples} samples"]
        lines.append("self (on top of the stack):")
        lines += [f"  {100 * s:5.1f} %  {frame}" for frame, s in self.self_share[:top]]
        lines.append("inclusive (anywhere on the stack):")
        lines += [f"  {100 * s:5.1f} %  {frame}" for frame, s in self.inclusive_share[:top]]
        return "\n".join(lines)


def summarise(raw: Path) -> Profile:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        # py-spy puts the thread name first ("process 123:\"python\"" / "thread ...").
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            if frame.partition(" (")[0] not in _PLUMBING:
                inclusive[frame] += count
    if total == 0:
        return Profile(0, [], [])
    return Profile(
        total,
        [(f, n / total) for f, n in own.most_common()],
        [(f, n / total) for f, n in inclusive.most_common()],
    )
