"""How curation's processes allocate: Arrow's buffers with jemalloc, C's heap (numpy's arrays, libxml2's
trees, pickled batches) kept for reuse rather than handed back to the system at each free, and the rows
file written a megabyte at a time (PiecewiseFile).

Curation allocates and frees blocks of megabytes all along (CSV blocks, batches of rows, the overlap
check's chunks: gigabytes in all at full scale). A page handed back to the system costs a fault to take
again, dear on a virtual machine whose host takes freed pages back: on the 2-core machines here, 160 MB
first touched took 1.3 s of system time, the same 160 MB touched again at once 0.03 s.

- Arrow: with pyarrow's default pool (mimalloc in its Linux wheels) the 100k-question benchmark took 5%
  longer than with jemalloc, with a third more system time, and held 45 MB more at its peak.
- glibc's malloc maps a block of 128 KB or more on its own and unmaps it when freed (the threshold follows
  the blocks freed, up to 32 MB), and hands the heap's top back past twice that. With blocks under 32 MB
  from the heap and up to 128 MB of its top kept, the full-size curation took 81 s instead of 91 s (the
  main process's system time 13.8 s instead of 19.7 s, the workers' 0.9 s instead of 3.4 s); the 100k
  benchmark's peak memory stayed within its run-to-run spread.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pyarrow as pa

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_BLOCK_LIMIT = 32 << 20  # blocks under it come from the heap (glibc's largest mmap threshold)
HEAP_TOP_KEPT = 128 << 20  # free memory at the heap's top kept for the next blocks
WRITE_PIECE = 1 << 20  # the most bytes a file write hands the system at once (see PiecewiseFile)


def tune_allocators() -> None:
    """Make jemalloc this process's default Arrow memory pool, if this pyarrow was built with it; with glibc,
    keep freed heap memory for reuse (see the module's docstring)."""
    if "jemalloc" in pa.supported_memory_backends():
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):  # not a glibc system (macOS, musl)
        glibc = None
    if glibc:
        libc = ctypes.CDLL(None)  # this process's C library
        libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_LIMIT)
        libc.mallopt(M_TRIM_THRESHOLD, HEAP_TOP_KEPT)


class PiecewiseFile:
    """A binary file to write, for Arrow's writers (`pa.PythonFile(PiecewiseFile(path), mode="w")`), that
    hands the system its data WRITE_PIECE bytes at a time.

    Linux caches a large write in large pages, taken from memory the host of a virtual machine may have
    taken back: on the 2-core machines here, Arrow writing 300 MB in batches of several megabytes took
    1.4 to 2.0 s of system time, in pieces of 1 MB 0.1 to 0.2 s (4 MB pieces: 0.9 to 1.0 s). The rows
    file of the 100k benchmark written so, curation's main process took 1.0 to 1.3 s of system time
    instead of 1.5 to 2.0 s, and the run about 0.4 s less (3 interleaved pairs)."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by close(), as Arrow's files are

    @property
    def closed(self) -> bool:
        return self.file.closed

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), WRITE_PIECE):
            self.file.write(view[start : start + WRITE_PIECE])
        return len(view)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()
