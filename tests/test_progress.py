"""jntk_dist.progress: a bar on a terminal that log lines do not break, plain periodic lines
where output is not a terminal, nothing when disabled — and a real job's output to a file."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jntk_dist.progress import Progress, format_seconds, progress, progress_mode, track

REPO = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def no_forced_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JNTK_PROGRESS", raising=False)
    monkeypatch.delenv("JNTK_PROGRESS_EVERY_S", raising=False)


def test_mode_follows_the_stream_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert progress_mode(True, Terminal()) == "bar"
    assert progress_mode(True, io.StringIO()) == "lines"
    assert progress_mode(False, Terminal()) == "off"
    monkeypatch.setenv("JNTK_PROGRESS", "lines")
    assert progress_mode(True, Terminal()) == "lines"
    monkeypatch.setenv("JNTK_PROGRESS", "off")
    assert progress_mode(True, io.StringIO()) == "off"
    assert progress_mode(False, io.StringIO()) == "off"  # disabled wins


def test_a_pseudo_terminal_draws_a_bar_once_it_has_a_size() -> None:
    """A pty nobody sized (0×0, e.g. under `script`) gets lines: tqdm would draw nothing there."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as stream:
            assert stream.isatty() and progress_mode(True, stream) == "lines"
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
            assert progress_mode(True, stream) == "bar"
    finally:
        os.close(slave)
        os.close(master)


def test_lines_when_not_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="jntk_dist.progress"):
        with progress(4, "demo", unit="tile", initial=1, every_s=0.0, stream=stream) as bar:
            for _ in range(3):
                bar.update()
                bar.set_postfix("7 entries/s")
    lines = [r.getMessage() for r in caplog.records if r.name == "jntk_dist.progress"]
    assert stream.getvalue() == ""  # nothing drawn
    assert lines[0].startswith("demo: 2/4 tile (50%), ") and "ETA" in lines[0]
    assert lines[-2].startswith("demo: 4/4 tile (100%)")
    assert re.fullmatch(r"demo: 4/4 tile \(100%\), [0-9.e+]+ tile/s, in [0-9.]+ s, 7 entries/s",
                        lines[-1]), lines[-1]
    assert len(lines) == 4  # one per update (every_s=0), one at the end


def test_progress_object_replaces_a_tqdm_call(caplog: pytest.LogCaptureFixture) -> None:
    """How the solvers use it: made and closed by hand, postfix as tqdm's keyword fields."""
    with caplog.at_level(logging.INFO, logger="jntk_dist.progress"):
        bar = Progress(10, "PCG[jacobi]", unit="it", initial=2, stream=io.StringIO())
        try:
            bar.update(3)
            bar.set_postfix(residual=f"{1e-3:.2e}")
        finally:
            bar.close()
        bar.close()  # twice is harmless
    lines = [r.getMessage() for r in caplog.records if r.name == "jntk_dist.progress"]
    assert len(lines) == 1 and lines[0].startswith("PCG[jacobi]: 5/10 it (50%), ")
    assert lines[0].endswith(", residual=1.00e-03")


def test_lines_are_periodic(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="jntk_dist.progress"):
        with progress(1000, "slow", every_s=3600.0, stream=io.StringIO()) as bar:
            for _ in range(1000):
                bar.update()
    lines = [r.getMessage() for r in caplog.records if r.name == "jntk_dist.progress"]
    assert len(lines) == 1 and lines[0].startswith("slow: 1000/1000 it (100%)")


def test_off_shows_nothing(caplog: pytest.LogCaptureFixture) -> None:
    terminal = Terminal()
    with caplog.at_level(logging.INFO, logger="jntk_dist.progress"):
        assert list(track(range(5), "quiet", enabled=False, every_s=0.0)) == [0, 1, 2, 3, 4]
        with progress(3, "quiet", enabled=False, stream=terminal) as bar:
            bar.update(3)
    assert caplog.records == [] and terminal.getvalue() == ""


def test_bar_on_a_terminal_keeps_log_lines_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record logged while the bar is up is written on a line of its own (through
    tqdm.write), not glued to the bar's last redraw; the console handler is restored after."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    handler = logging.StreamHandler(terminal)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with progress(3, "drawn", unit="tile") as bar:
            bar.update()
            logging.getLogger("jntk_dist.demo").warning("tile (0, 1) done")
            bar.update(2)
        logging.getLogger("jntk_dist.demo").warning("after the bar")
    finally:
        root.removeHandler(handler)
    out = terminal.getvalue()
    assert "drawn:" in out and "3/3" in out  # the bar was drawn
    line = next(s for s in out.split("\n") if "tile (0, 1) done" in s)
    assert line.split("\r")[-1] == "tile (0, 1) done", repr(line)
    assert out.endswith("after the bar\n")


def test_format_seconds() -> None:
    assert format_seconds(4.25) == "4.2 s"
    assert format_seconds(42) == "42 s"
    assert format_seconds(200) == "3 min 20 s"
    assert format_seconds(7500) == "2 h 05 min"


def test_job_output_to_a_file_has_progress_lines_not_redraws(tmp_path: Path) -> None:
    """``jntk kernel`` (three strips) with stderr to a file: plain lines, no carriage returns."""
    err = tmp_path / "stderr.txt"
    code = ("import sys, jntk_dist.workflows.kernel as k; k.ROW_BLOCK_ENTRIES = 5 * 60 * 5; "
            "from jntk_dist.cli import main; sys.exit(main(sys.argv[1:]))")
    with open(err, "w") as fh:
        run = subprocess.run([sys.executable, "-c", code, "kernel", "--dataset", "fibonacci",
                              "--option", "n=12", "--option", "d=4", "--depth", "2",
                              "--out", str(tmp_path / "k.npy")], cwd=REPO, stderr=fh,
                             stdout=subprocess.PIPE, text=True, timeout=300,
                             env={**_env(), "JNTK_PROGRESS_EVERY_S": "0"})
    log = err.read_text()
    assert run.returncode == 0, log
    assert "\r" not in log
    counts = [int(m[1]) for m in re.finditer(r"jntk L=2 gelu: (\d+)/12 pt", log)]
    assert counts == [5, 10, 12, 12], log  # 5 points a strip, then the final line
    assert (tmp_path / "k.npy").exists()


def _env() -> dict[str, str]:
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("JNTK_PROGRESS", None)
    return env
