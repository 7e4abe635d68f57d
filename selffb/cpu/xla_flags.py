"""XLA:CPU compiler options for selffb's train and eval steps (`config.train.xla_cpu_onednn`).

jaxlib 0.10 on x86-64 hands dots to YNNPACK by default. For the training step, oneDNN runs this
project's matmul shapes faster (the weight-gradient dots most), and YNNPACK keeps the
reductions, which XLA's own emitter splits into slow reduce-windows when oneDNN has the dots;
measured with bench/train_throughput.py (bench/README.md). The options go to those two jitted
steps only: the KV-cache decode loop, whose dots are a few rows, runs faster on the defaults.
"""
import importlib.metadata
import platform

# Each option with its value as a jit compiler option and as an XLA_FLAGS flag.
ONEDNN_DOTS = {
    'xla_cpu_use_onednn': (True, 'true'),
    'xla_cpu_experimental_onednn_fusion_type': ('LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT',
                                                'individual_dot'),
    'xla_cpu_experimental_ynn_fusion_type': ('LIBRARY_FUSION_TYPE_REDUCE', 'reduce'),
}
MIN_JAXLIB = (0, 10)  # The first jaxlib these options were measured with.


def step_options(enabled: bool, device_platform: str, machine: str, jaxlib_version: str) -> dict:
  """The `compiler_options` of a train or eval step: ONEDNN_DOTS when enabled, on x86-64 CPU
  devices and jaxlib >= MIN_JAXLIB; otherwise none."""
  version = tuple(int(x) for x in jaxlib_version.split('.')[:2])
  if (not enabled or device_platform != 'cpu' or machine.lower() not in ('x86_64', 'amd64')
      or version < MIN_JAXLIB):
    return {}
  return {name: option for name, (option, _) in ONEDNN_DOTS.items()}


def for_mesh(config, mesh) -> dict:
  """step_options for `config` on the devices of `mesh`, on this machine."""
  return step_options(config.train.xla_cpu_onednn, mesh.devices.flat[0].platform,
                      platform.machine(), importlib.metadata.version('jaxlib'))


def as_xla_flags(options: dict) -> str:
  """`options` (from step_options) as XLA_FLAGS text, for a whole process."""
  return ' '.join(f'--{name}={ONEDNN_DOTS[name][1]}' for name in options)
