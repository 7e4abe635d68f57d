"""Eight simulated CPU devices for the sharding tests and selffb's XLA flags; set before jax is
imported anywhere."""
import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from selffb import xla_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

xla_flags.apply()  # The suite runs with the XLA flags launch.py sets.
