"""Progress bars: shown to a person at a terminal, never in pipes, logs or --json output."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import cli_env, run_in_terminal

pytestmark = pytest.mark.unit

SCRIPT = """
from trainable.cli import progress_bar
with progress_bar(3, "working through", "item", quiet={quiet}) as bar:
    for _ in range(3):
        bar.update(1)
print("done")
"""


def test_a_bar_is_drawn_on_a_terminal_and_erased():
    code, out = run_in_terminal([sys.executable, "-c", SCRIPT.format(quiet=False)], timeout=60)
    assert code == 0, out
    assert "working through" in out and "/3" in out, out
    assert out.rstrip().endswith("done")  # erased: nothing of the bar after the work's output


def test_no_bar_when_quiet_even_on_a_terminal():
    code, out = run_in_terminal([sys.executable, "-c", SCRIPT.format(quiet=True)], timeout=60)
    assert code == 0 and "working through" not in out, out


@pytest.mark.parametrize("piped", ["stdout", "stderr"])
def test_no_bar_when_either_stream_is_not_a_terminal(piped):
    # One stream piped (as in `cmd > out.txt` or `cmd 2> log`), the other on a terminal.
    import fcntl
    import os
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # not 0 x 0
    streams = {"stdout": follower, "stderr": follower, piped: subprocess.PIPE}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(quiet=False)], env=cli_env(),
                            stdin=follower, stdout=streams["stdout"], stderr=streams["stderr"])
    os.close(follower)
    out = (proc.stdout or proc.stderr).read().decode()
    proc.wait(timeout=60)
    os.set_blocking(leader, False)
    try:
        shown = os.read(leader, 65536).decode(errors="replace")
    except (BlockingIOError, OSError):
        shown = ""
    os.close(leader)
    assert proc.returncode == 0
    assert "working through" not in out + shown, out + shown
