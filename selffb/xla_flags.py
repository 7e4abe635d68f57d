"""XLA:CPU flags that make selffb's train step faster; set before jax starts its backend.

jaxlib 0.10 on x86-64 hands dots to YNNPACK by default. oneDNN runs this project's matmul
shapes faster (the weight-gradient dots most), and YNNPACK still takes the reductions, which
XLA's own emitter splits into slow reduce-windows when oneDNN has the dots. Measured with
bench/train_throughput.py (README, Speed). XLA reads XLA_FLAGS once, when the first computation
starts its backend, so launch.py and the benchmarks call `apply()` before anything runs; call it
the same way in your own scripts. `SELFFB_XLA_CPU_FLAGS=0` keeps XLA's defaults, and a run whose
XLA_FLAGS already names any of these flags keeps its own choice whole. Other backends ignore them.
"""
import importlib.metadata
import os
import platform
import re

CPU_FLAGS = (('xla_cpu_use_onednn', 'true'),
             ('xla_cpu_experimental_onednn_fusion_type', 'individual_dot'),
             ('xla_cpu_experimental_ynn_fusion_type', 'reduce'))
OPT_OUT = 'SELFFB_XLA_CPU_FLAGS'
MIN_JAXLIB = (0, 10)  # The first jaxlib with these flags that was measured.


def with_cpu_flags(xla_flags: str, machine: str, jaxlib_version: str) -> str:
  """`xla_flags` with CPU_FLAGS appended on x86-64 and jaxlib >= MIN_JAXLIB, unless it already
  names one of them; otherwise unchanged."""
  version = tuple(int(x) for x in re.findall(r'\d+', jaxlib_version)[:2])
  if machine.lower() not in ('x86_64', 'amd64') or version < MIN_JAXLIB:
    return xla_flags
  named = {f.lstrip('-').split('=')[0] for f in xla_flags.split()}
  if named & {name for name, _ in CPU_FLAGS}:
    return xla_flags
  return ' '.join(([xla_flags] if xla_flags else []) + [f'--{n}={v}' for n, v in CPU_FLAGS])


def apply(environ=os.environ) -> str:
  """Adds CPU_FLAGS to environ['XLA_FLAGS'] where with_cpu_flags does and `OPT_OUT` is not '0';
  returns the flags added ('' for none)."""
  if environ.get(OPT_OUT, '1') == '0':
    return ''
  before = environ.get('XLA_FLAGS', '')
  after = with_cpu_flags(before, platform.machine(), importlib.metadata.version('jaxlib'))
  environ['XLA_FLAGS'] = after
  return after[len(before):].strip()
