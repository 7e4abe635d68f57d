"""What a run needs from its process and filesystem: a lock on the workdir, atomic writes, and
stop signals.

The lock is an flock: the kernel releases it when the holder dies, so a lock file that still
names a holder but can be taken belongs to a dead run, and is taken over with a warning.
"""
import contextlib
import fcntl
import json
import os
import signal
import socket

from absl import logging
import jax
from jax.experimental import multihost_utils


class WorkdirLocked(RuntimeError):
  pass


def workdir_problem(workdir):
  """Why `workdir` cannot be (or become) a run directory, or None: a file, a path under a file,
  or under a directory this process cannot write."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    return f'--workdir={workdir} is a file, not a directory; give a directory path.'
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    return f'--workdir={workdir} lies under {parent}, which is a file; give a directory path.'
  if not os.access(parent, os.W_OK | os.X_OK):
    return f'--workdir={workdir}: {parent} is not writable here; give another directory.'
  return None


def acquire(workdir):
  """Locks workdir for this process; returns the handle to pass to `release`."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'lock')
  f = open(path, 'a+')
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or 'another process'
    f.close()
    raise WorkdirLocked(f'{workdir} is in use by {holder}; wait for that run to end or stop it '
                        'before starting another here.') from None
  f.seek(0)
  previous = f.read().strip()
  if previous:
    logging.warning('taking over the lock on %s from %s, which is no longer running.', workdir,
                    previous)
  f.truncate(0)
  f.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
  f.flush()
  return f


def release(f):
  f.truncate(0)
  fcntl.flock(f, fcntl.LOCK_UN)
  f.close()


@contextlib.contextmanager
def locked(workdir):
  """Holds the workdir lock on process 0 (hosts share the workdir) for the `with` body."""
  handle = acquire(workdir) if jax.process_index() == 0 else None
  try:
    yield
  finally:
    if handle is not None:
      release(handle)


def write_text(path, text):
  """Process 0 writes path atomically (a temporary file renamed over it). The temporary file is
  the writer's own, so processes that write the same report at once (a sweep's jobs) never
  rename each other's half-written file."""
  write_bytes(path, text.encode('utf-8'))


def write_bytes(path, data):
  """write_text for bytes."""
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = f'{path}.{socket.gethostname()}.{os.getpid()}.tmp'
    with open(tmp, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)


def write_json(path, obj):
  write_text(path, json.dumps(obj, indent=2))


def write_jsonl(path, rows):
  write_text(path, ''.join(json.dumps(row) + '\n' for row in rows))


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class StopSignals:
  """SIGTERM/SIGINT ask the loop to checkpoint and exit; on several hosts JAX's preemption
  sync point makes every host stop at the same step."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def stop_at(self, step):
    if jax.process_count() > 1:
      if multihost_utils.reached_preemption_sync_point(step):
        self.received = self.received or 'preemption notice'
    return self.received is not None
