"""selffb's entry point: python launch.py --config=configs/default.py --workdir=runs/default."""
import logging as std_logging
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file; override keys with --config.section.key=value.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, metrics, reports.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'selftrain', 'eval', 'sample'],
                          'train: train (resuming from workdir) and report; selftrain: round 0 '
                          'then self-training rounds (resuming), report in workdir/rounds.md; '
                          'eval: report the latest checkpoint of workdir; sample: continue '
                          'prompts with it.')
_MULTIHOST = flags.DEFINE_bool(
    'multihost', os.environ.get('SELFFB_MULTIHOST') == '1',
    'Call jax.distributed.initialize() first (every host runs the same command). Cluster '
    'settings are detected (TPU pods, SLURM, Open MPI) unless the three flags below are given.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'multihost: host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'multihost: number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'multihost: this process, 0-based.')
_PROMPT = flags.DEFINE_multi_string('prompt', [], 'sample mode: a prompt (repeatable).')
_PROMPTS_FILE = flags.DEFINE_string('prompts_file', None, 'sample mode: a file, one prompt a line.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(std_logging.Filter):
  """Keeps selffb's INFO lines; other libraries (orbax, tfds, jax) only from WARNING up."""

  def filter(self, record):
    own = os.sep + 'selffb' + os.sep in record.pathname or record.pathname.endswith('launch.py')
    return own or record.levelno >= std_logging.WARNING


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # Before JAX's backend starts its threads; for the training modes only, since it makes
  # compiling slower and eval and sample mostly compile.
  if _MODE.value in ('train', 'selftrain') and _CONFIG.value.train.reuse_host_memory:
    from selffb.cpu import host_memory  # pylint: disable=g-import-not-at-top
    logging.info('host memory reuse (glibc malloc settings): %s',
                 'on' if host_memory.reuse_freed_memory() else 'unavailable, not glibc')
  if _MULTIHOST.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    logging.info('process %d of %d; %d local and %d global devices', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
  # After flag parsing, so --help stays fast.
  from selffb import selftrain  # pylint: disable=g-import-not-at-top
  from selffb.modes import evaluate, sample, train  # pylint: disable=g-import-not-at-top
  logging.info('config:\n%s', _CONFIG.value)
  if _MODE.value == 'train':
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  elif _MODE.value == 'selftrain':
    selftrain.run_selftrain(_CONFIG.value, _WORKDIR.value)
  elif _MODE.value == 'eval':
    evaluate.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)
  else:
    prompts = list(_PROMPT.value)
    if _PROMPTS_FILE.value:
      with open(_PROMPTS_FILE.value) as f:
        prompts += [line.rstrip('\n') for line in f if line.strip()]
    sample.sample_checkpoint(_CONFIG.value, _WORKDIR.value, prompts)


if __name__ == '__main__':
  app.run(main)
