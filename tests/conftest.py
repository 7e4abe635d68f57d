"""Eight simulated CPU devices for the sharding tests (set before jax is imported anywhere), strict
rank promotion, one persistent compilation cache for the session, and the suite's tiers:

  python -m pytest -q -m "not slow" tests   quick: pure functions and single compiled steps
  python -m pytest -q tests                 default: everything but the end-to-end tier
  python -m pytest -q -m e2e tests          end-to-end: launch.py runs, kill -9, sweeps, selftrain
  python -m pytest -q --e2e tests           default and end-to-end together (what .ci/run runs)

Add `-n 2` (pytest-xdist) to run any of them on two processes. An `e2e` test is also `slow`.
"""
import os
import shutil
import sys
import tempfile

# The compiled programs of one session (its xdist workers and the launch.py runs its tests start
# inherit the variable) are cached on disk, so a program that several tests build is compiled
# once. Under the session's own directory: a test run never reads another run's cache.
if 'SELFFB_TEST_CACHE' not in os.environ:
  os.environ['SELFFB_TEST_CACHE'] = tempfile.mkdtemp(prefix='selffb-tests-')
  _OWN_CACHE = True
else:
  _OWN_CACHE = False
os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(os.environ['SELFFB_TEST_CACHE'], 'jax')
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.2'
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_numpy_rank_promotion', 'raise')  # An implicit broadcast is a bug here.


def pytest_addoption(parser):
  parser.addoption('--e2e', action='store_true',
                   help='also run the end-to-end tier (deselected unless -m names it)')


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: a compiled run or more; skipped by -m "not slow" (the '
                          'quick tier)')
  config.addinivalue_line('markers', 'e2e: end-to-end (launch.py subprocesses, kill -9, sweeps, '
                          'selftrain rounds); run with -m e2e or --e2e')


def pytest_unconfigure(config):
  if _OWN_CACHE and not hasattr(config, 'workerinput'):
    shutil.rmtree(os.environ['SELFFB_TEST_CACHE'], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  for item in items:
    if item.get_closest_marker('e2e'):
      item.add_marker(pytest.mark.slow)
  if config.getoption('--e2e') or 'e2e' in (config.getoption('-m') or ''):
    return
  kept = [item for item in items if not item.get_closest_marker('e2e')]
  if len(kept) < len(items):
    config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker('e2e')])
    items[:] = kept
