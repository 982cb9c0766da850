"""Progress of long loops, in one place: a bar on a terminal, plain periodic lines elsewhere.

    with progress(total=len(tiles), desc="gram tiles", unit="tile") as bar:
        for tile in tiles:
            ...
            bar.update()
    for item in track(items, desc="eigenfeatures"):
        ...

Where stderr is a terminal (or in a Jupyter kernel) a tqdm bar is drawn, and log records are
routed through ``tqdm.write`` while it is shown, so log lines and the bar do not interleave.
Where it is not (output to a file, ``ray job logs``), a redraw would become a line each: instead
one plain line — ``gram tiles: 12/40 (30%), 1.3 tile/s, ETA 21 s`` — is logged every
``every_s`` seconds (``JNTK_PROGRESS_EVERY_S``, default 30) and one when the loop ends.
``JNTK_PROGRESS=bar|lines|off`` overrides the choice.

The lowest room of the house: it imports nothing from the package, so every room may use it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any, Iterable, Iterator, Literal, TypeVar

__all__ = ["Progress", "progress", "track", "progress_mode", "format_seconds"]

log = logging.getLogger("jntk_dist.progress")

Mode = Literal["bar", "lines", "off"]
T = TypeVar("T")
DEFAULT_EVERY_S = 30.0


def _in_jupyter_kernel() -> bool:
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def progress_mode(enabled: bool = True, stream: Any = None) -> Mode:
    """How progress is shown: ``off`` when disabled, else ``JNTK_PROGRESS`` when set, else
    ``bar`` on a terminal (of some size) or in a Jupyter kernel and ``lines`` otherwise."""
    if not enabled:
        return "off"
    forced = os.environ.get("JNTK_PROGRESS", "").strip().lower()
    if forced in ("bar", "lines", "off"):
        return forced  # type: ignore[return-value]
    stream = sys.stderr if stream is None else stream
    is_tty = getattr(stream, "isatty", None)
    if callable(is_tty) and is_tty():
        return "lines" if _zero_sized(stream) else "bar"
    return "bar" if _in_jupyter_kernel() else "lines"


def _zero_sized(stream: Any) -> bool:
    """A terminal of 0 columns or 0 rows (a pty nobody sized), where tqdm draws nothing."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return size.columns == 0 or size.lines == 0


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 20 s``, ``2 h 05 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class Progress:
    """A loop's progress: ``update(n)``, ``set_postfix(text, **fields)``, ``n`` done so far,
    ``close()`` at the end (or use :func:`progress`, which closes it).

    Draws a tqdm bar (mode ``bar``; log records of the root logger's console handlers go through
    ``tqdm.write`` above it until ``close``), logs a plain line every ``every_s`` seconds and one
    at the end (``lines``), or shows nothing (``off``). ``mode=None`` picks one with
    :func:`progress_mode` (``enabled``, ``stream``). A drop-in for the tqdm calls it replaces:
    ``tqdm(total=T, initial=i, desc=d, unit=u)`` becomes ``Progress(T, d, unit=u, initial=i)``.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0,
                 mode: Mode | None = None, every_s: float | None = None,
                 logger: logging.Logger | None = None, *, enabled: bool = True,
                 stream: Any = None) -> None:
        self.mode: Mode = progress_mode(enabled, stream) if mode is None else mode
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = int(initial)
        self.postfix = ""
        self.every_s = float(os.environ.get("JNTK_PROGRESS_EVERY_S", DEFAULT_EVERY_S)
                             if every_s is None else every_s)
        self.log = logger or log
        self.start = self.last_line = time.monotonic()
        self._bar: Any = None
        self._redirect = contextlib.ExitStack()
        if self.mode == "bar":
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                             dynamic_ncols=True)
            self._redirect.enter_context(logging_redirect_tqdm())

    def update(self, n: int = 1) -> None:
        """``n`` more items done."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines" and time.monotonic() - self.last_line >= self.every_s:
            self.log.info("%s", self.line())
            self.last_line = time.monotonic()

    def set_postfix(self, text: str = "", **fields: Any) -> None:
        """Extra text after the counts (e.g. a throughput): ``text`` and/or ``key=value``
        fields, as tqdm's ``set_postfix``."""
        self.postfix = ", ".join([text] * bool(text) + [f"{k}={v}" for k, v in fields.items()])
        if self._bar is not None:
            self._bar.set_postfix_str(self.postfix, refresh=False)

    def line(self, final: bool = False) -> str:
        """The plain progress line: done/total, rate, ETA (or the elapsed time when final)."""
        elapsed = time.monotonic() - self.start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        parts = [f"{self.desc}: {done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        if rate > 0:
            parts.append(f"{rate:.3g} {self.unit}/s")
        if final:
            parts.append(f"in {format_seconds(elapsed)}")
        elif rate > 0 and self.total is not None:
            parts.append(f"ETA {format_seconds((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def close(self) -> None:
        """End the bar (and the log routing), or log the final line (when anything was done)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._redirect.close()
        elif self.mode == "lines" and self.n > self.initial:
            self.log.info("%s", self.line(final=True))
        self.mode = "off"


@contextlib.contextmanager
def progress(total: int | None, desc: str, *, unit: str = "it", initial: int = 0,
             enabled: bool = True, every_s: float | None = None, stream: Any = None,
             logger: logging.Logger | None = None) -> Iterator[Progress]:
    """A :class:`Progress` for one loop, closed at the end; ``enabled=False`` shows nothing."""
    bar = Progress(total, desc, unit=unit, initial=initial, every_s=every_s, logger=logger,
                   enabled=enabled, stream=stream)
    try:
        yield bar
    finally:
        bar.close()


def track(items: Iterable[T], desc: str, *, total: int | None = None, unit: str = "it",
          enabled: bool = True, every_s: float | None = None) -> Iterator[T]:
    """Iterate over ``items`` while showing progress (:func:`progress` around the loop)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(total, desc, unit=unit, enabled=enabled, every_s=every_s) as bar:
        for item in items:
            yield item
            bar.update()
