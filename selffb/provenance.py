"""What made a run: the code's git revision (and whether its tree had changes) and the versions
of the libraries that decide its numbers. Every start of a train or selftrain run appends one
entry to <workdir>/provenance.json, so a resumed run shows each session's."""
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

import jax

from selffb import runtime

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain')
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args):
  """git's stdout in the code's directory, or None without git or outside a repository."""
  try:
    out = subprocess.run(['git', '-C', _ROOT, *args], capture_output=True, text=True,
                         timeout=30, check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout if out.returncode == 0 else None


def _version(package):
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def collect():
  """This process's entry: time, git revision and dirtiness (None when unknown), versions."""
  revision = _git('rev-parse', 'HEAD')
  status = _git('status', '--porcelain') if revision is not None else None
  return {'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
          'git_revision': revision.strip() if revision is not None else None,
          'git_dirty': None if status is None else bool(status.strip()),
          'versions': {p: _version(p) for p in PACKAGES}, 'python': platform.python_version(),
          'backend': jax.default_backend(), 'devices': jax.device_count(),
          'processes': jax.process_count(), 'argv': list(sys.argv)}


def record(workdir):
  """Appends this session's entry to workdir/provenance.json (process 0; atomic)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, 'provenance.json')
  sessions = []
  if os.path.exists(path):
    with open(path) as f:
      sessions = json.load(f)['sessions']
  runtime.write_json(path, {'sessions': sessions + [collect()]})
