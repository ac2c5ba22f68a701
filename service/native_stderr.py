"""C libraries' stderr relayed into the JSON log, one warning per line, counted.

The service logs one JSON object per line. GDCM's bundled libjpeg prints "Corrupt JPEG data:
premature end of data segment" straight to file descriptor 2, which a log collector reading
both streams would take as a broken line. At start-up fd 2 becomes a pipe that a thread reads;
each line becomes a warning from `service.native_stderr` and increments a metric. Python's own
`sys.stderr` keeps the original stream, so a traceback at exit is never stuck in the pipe.
Decode worker processes inherit fd 2, so their C libraries are captured too.

`capturing_stderr` runs one call with fd 2 pointed at an in-memory file and returns what the
call wrote: GDCM reports a truncated JPEG frame only there, and the DICOM decoder refuses the
file on it. The swap is process-wide, so calls are serialised, and a line another thread's C
code writes in that window is attributed to the call (at worst a good file is refused, never
a broken one scored). What was captured is written back to fd 2 afterwards, so it is still
logged and counted.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger("service.native_stderr")
MAX_LINE_BYTES = 300  # libjpeg's and GDCM's messages are short; a longer line is cut, not split
PIPE_BYTES = 1 << 20
Result = TypeVar("Result")
swapping = threading.Lock()


def capture_native_stderr(on_line: Callable[[], None]) -> None:
    """Point fd 2 at a pipe whose lines are logged; `on_line` is called once per line (a metric)."""
    original = os.dup(2)
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    os.set_blocking(write_end, False)  # a C library writing a flood drops lines rather than blocks a decode
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = open(original, "w", buffering=1, errors="backslashreplace")  # lives as long as the process
    threading.Thread(target=relay, args=(read_end, on_line), name="native-stderr", daemon=True).start()


def relay(read_end: int, on_line: Callable[[], None]) -> None:
    with open(read_end, "rb") as pipe:
        for line in pipe:
            on_line()
            text = line[:MAX_LINE_BYTES].decode("utf-8", "replace").rstrip()
            logger.warning("a C library wrote to stderr: %s", text)


def capturing_stderr(function: Callable[[], Result]) -> tuple[Result, bytes]:
    """Call `function` with fd 2 captured; returns its result and what it wrote to fd 2."""
    with swapping:
        capture = os.memfd_create("stderr")  # in memory: nothing is written to disk
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture, 2)
        try:
            result = function()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            written = os.pread(capture, os.fstat(capture).st_size, 0)
            os.close(capture)
            if written:
                os.write(2, written)
    return result, written
