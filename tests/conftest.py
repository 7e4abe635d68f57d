"""Eight simulated CPU devices for the sharding tests (set before jax is imported anywhere),
strict rank promotion, and the `slow` marker (`pytest -m "not slow"` is the quick loop)."""
import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_numpy_rank_promotion', 'raise')  # An implicit broadcast is a bug here.


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: subprocess-heavy or long; skipped by -m "not slow"')
