"""Curation's processes keep freed C heap memory for reuse (data_prep/allocators.py): the rule measured in
a fresh process, with and without it, by the page faults of taking freed memory again. Its files are
written a megabyte at a time, and read back as Arrow wrote them."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pytest

from data_prep.allocators import WRITE_PIECE, PiecewiseFile

# 40 MB in blocks of 4 MB, written, freed, taken again: 10 rounds. glibc maps such a block on its own at
# first; once one is freed it takes them from the heap, whose top it hands back past twice a block's size.
ROUNDS = """
import ctypes, resource, sys
if sys.argv[1] == "tuned":
    from data_prep.allocators import tune_allocators
    tune_allocators()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    blocks = [libc.malloc(4 << 20) for _ in range(10)]
    for block in blocks:
        libc.memset(block, 1, 4 << 20)
    for block in reversed(blocks):
        libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True)
    return int(result.stdout)


def glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


@pytest.mark.skipif(not glibc(), reason="glibc's malloc only")
def test_freed_heap_memory_is_taken_again_without_faults():
    pages = (40 << 20) // os.sysconf("SC_PAGE_SIZE")  # one round's
    assert faults("default") > 5 * pages  # handed back and faulted in again, round after round
    assert faults("tuned") < 2 * pages  # the first round's, then reused


def test_a_piecewise_file_hands_the_system_a_megabyte_at_a_time(tmp_path):
    """An Arrow stream of a 3.5 MB text and small batches: no write over WRITE_PIECE, the same file."""
    table = pa.table({"text": ["x" * (7 * WRITE_PIECE // 2), "y", ""], "number": [1, 2, 3]})
    sizes = []

    class Counted:  # the real file, its writes' sizes noted
        def __init__(self, file):
            self.file, self.closed = file, False

        def write(self, data):
            sizes.append(len(data))
            return self.file.write(data)

        def flush(self):
            self.file.flush()

        def close(self):
            self.file.close()
            self.closed = True

    def write(sink: pa.NativeFile) -> None:
        with sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
            writer.write_table(table.slice(1))

    piecewise = PiecewiseFile(tmp_path / "rows.arrow")
    piecewise.file = Counted(piecewise.file)
    write(pa.PythonFile(piecewise, mode="w"))
    write(pa.OSFile(str(tmp_path / "whole.arrow"), "wb"))
    assert max(sizes) == WRITE_PIECE and sum(sizes) == (tmp_path / "whole.arrow").stat().st_size
    assert (tmp_path / "rows.arrow").read_bytes() == (tmp_path / "whole.arrow").read_bytes()
    assert pa.ipc.open_stream(str(tmp_path / "rows.arrow")).read_all() == pa.concat_tables([table, table[1:]])
