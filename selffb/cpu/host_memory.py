"""Keep freed host memory for reuse (glibc malloc settings; `config.train.reuse_host_memory`).

XLA:CPU allocates each execution's buffers anew and frees them at its end. With glibc's default
settings the large ones come from mmap or from per-thread arenas and go back to the kernel when
freed, so every train step page-faults its whole working set in again: about 135,000 minor
faults a step on the reference benchmark shape, 15-20% of its time. Three settings keep that
memory in the process instead: one arena for all threads, no mmap for large blocks, and no
trimming of the heap's top. The process then keeps the host memory it has freed, as tcmalloc
and jemalloc do, and the heap may first grow by a few blocks where one step's allocations overlap
the last one's frees: on the reference shape the peak resident memory went from 1,414 to 1,446
MB (this and the compile times below are scratch measurements; bench/README.md). The cost is at
compile time: with one arena XLA's compiler threads contend for its lock, and the reference
step's first call took 5.5 s against 4.1 s. So they pay off in a training run
and not in the test suite, which compiles far more than it steps and keeps glibc's defaults.
Set them before the JAX backend starts its threads (launch.py does for --mode=train and
selftrain, as does bench/train_throughput.py); a thread that has allocated before then keeps an
arena of its own.
"""
import ctypes
import ctypes.util

# (mallopt parameter from glibc's malloc.h, value, the same setting as an environment variable).
SETTINGS = (
    (-8, 1, 'MALLOC_ARENA_MAX'),  # M_ARENA_MAX: every thread allocates from the main arena.
    (-4, 0, 'MALLOC_MMAP_MAX_'),  # M_MMAP_MAX: no block is mmap'ed (and unmapped when freed).
    (-1, 2 ** 31 - 1, 'MALLOC_TRIM_THRESHOLD_'),  # M_TRIM_THRESHOLD: keep up to 2 GiB free.
)
# The same settings for a child process (bench peers), read by glibc when it starts.
ENV = {name: str(value) for _, value, name in SETTINGS}


def _glibc():
  """This process's C library if it is glibc, else None (macOS, musl)."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement
  except (OSError, AttributeError):
    return None
  return libc


def reuse_freed_memory() -> bool:
  """Applies SETTINGS to this process; True where they took (glibc), False elsewhere."""
  libc = _glibc()
  if libc is None:
    return False
  took = [libc.mallopt(param, value) == 1 for param, value, _ in SETTINGS]  # Each one tried.
  return all(took)
