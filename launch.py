"""selffb's entry point: python launch.py --config=configs/default.py --workdir=runs/default."""
import logging as std_logging
import os
import sys
import warnings

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file; override keys with --config.section.key=value. eval and sample '
    "read the run's own config; with --config they take only sampling and evaluation keys.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, metrics, reports.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'selftrain', 'finetune', 'eval', 'sample',
                                            'sweep', 'sweep_plan', 'sweep_report'],
                          'train: train (resuming from workdir) and report; selftrain: round 0 '
                          'then self-training rounds (resuming), report in workdir/rounds.md; '
                          'finetune: train on recorded feedback (task feedback) from '
                          'finetune.init_workdir or scratch, report in workdir/finetune.md; '
                          'eval: report the latest checkpoint of workdir; sample: continue '
                          'prompts with it; sweep: run an ablation file (configs/ablations/) '
                          'variant x seed in workdir/<variant>/seed_<s>, skipping finished '
                          'runs, report in workdir/results.md; sweep_plan: print its entries '
                          'and their commands; sweep_report: rebuild its report.')
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
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Check the config and build the model abstractly, '
                              'print the parameter count and the plan, write nothing.')
_COMPILATION_CACHE = flags.DEFINE_string(
    'compilation_cache',
    os.environ.get('JAX_COMPILATION_CACHE_DIR',
                   os.path.join(os.path.expanduser('~'), '.cache', 'selffb', 'jax')),
    "JAX's persistent compilation cache: a rerun of the same command loads its compiled steps "
    "instead of compiling them; '' turns it off.")
_SWEEP_INDEX = flags.DEFINE_integer('sweep_index', None, 'sweep, sweep_plan: entry i only '
                                   '(0-based, as sweep_plan lists them), e.g. a job array task.')
_SWEEP_EXECUTOR = flags.DEFINE_enum(
    'sweep_executor', 'local', ['local', 'slurm', 'submitit_local'],
    'sweep: local runs the entries here one after another; slurm submits a job per entry '
    'through submitit with config.slurm; submitit_local runs those jobs as local processes.')
_VERBOSE = flags.DEFINE_bool('verbose', False, 'Also print the whole config (it is always '
                             'written to workdir/config.json).')
flags.mark_flags_as_required(['workdir'])


class _QuietLibraries(std_logging.Filter):
  """Keeps selffb's INFO lines; other libraries (orbax, jax) from WARNING up, tfds from ERROR."""

  def filter(self, record):
    own = os.sep + 'selffb' + os.sep in record.pathname or record.pathname.endswith('launch.py')
    if 'tensorflow_datasets' in record.pathname:  # Warns of its own config objects: selffb's.
      return record.levelno >= std_logging.ERROR
    return own or record.levelno >= std_logging.WARNING


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None and _MODE.value in ('train', 'selftrain', 'finetune', 'sweep',
                                               'sweep_plan'):
    raise app.UsageError(f'--mode={_MODE.value} needs --config (e.g. configs/default.py, or '
                         'for the sweep modes a file in configs/ablations/).')
  if _SWEEP_INDEX.value is not None and _MODE.value not in ('sweep', 'sweep_plan'):
    raise app.UsageError('--sweep_index applies to --mode=sweep and --mode=sweep_plan.')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # Before JAX's backend starts its threads; for the training modes only, since it makes
  # compiling slower and eval and sample mostly compile.
  trains = _MODE.value in ('train', 'selftrain', 'finetune') or (
      _MODE.value == 'sweep' and _SWEEP_EXECUTOR.value == 'local' and not _DRY_RUN.value)
  if trains and _CONFIG.value.train.reuse_host_memory:
    from selffb.cpu import host_memory  # pylint: disable=g-import-not-at-top
    logging.info('host memory reuse (glibc malloc settings): %s',
                 'on' if host_memory.reuse_freed_memory() else 'unavailable, not glibc')
  import jax  # pylint: disable=g-import-not-at-top
  if _COMPILATION_CACHE.value:
    jax.config.update('jax_compilation_cache_dir', _COMPILATION_CACHE.value)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)
    # XLA:CPU cannot serialise oneDNN-fused executables (train.xla_cpu_onednn's train and eval
    # steps): those are compiled each run, as without the cache; the rest is loaded.
    warnings.filterwarnings('ignore', message='Error writing persistent compilation cache entry '
                            '.*onednn-fusion')
  if _MULTIHOST.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    logging.info('process %d of %d; %d local and %d global devices', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
  if _VERBOSE.value and _CONFIG.value is not None:
    logging.info('config:\n%s', _CONFIG.value)
  # After flag parsing, so --help stays fast.
  from selffb import checkpoint, errors, runtime  # pylint: disable=g-import-not-at-top
  try:
    _run_mode()
  except (errors.InputError, FileNotFoundError, runtime.WorkdirLocked,
          checkpoint.CheckpointError) as e:
    # A problem the user can fix: the message names it; a traceback would only bury it.
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def _run_sweep_mode():
  from selffb.sweep import run  # pylint: disable=g-import-not-at-top
  config_file, overrides = None, {}
  if _CONFIG.value is not None:  # The ablation file's path (for its sweep()) and the overrides.
    config_file = config_flags.get_config_filename(flags.FLAGS['config'])
    overrides = config_flags.get_override_values(flags.FLAGS['config'])
  args = (_CONFIG.value, config_file, overrides, _WORKDIR.value)
  if _MODE.value == 'sweep_report':
    run.report(*args)
  elif _MODE.value == 'sweep_plan' or _DRY_RUN.value:
    run.print_plan(*args, _SWEEP_INDEX.value, _SWEEP_EXECUTOR.value)
  else:
    run.run_sweep(*args, _SWEEP_INDEX.value, _SWEEP_EXECUTOR.value)


def _run_mode():
  # pylint: disable-next=g-import-not-at-top
  from selffb.modes import dry_run, evaluate, finetune, sample, selftrain, train
  if _MODE.value.startswith('sweep'):
    _run_sweep_mode()
  elif _DRY_RUN.value:
    dry_run.plan(_CONFIG.value, _WORKDIR.value, _MODE.value)
  elif _MODE.value == 'train':
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  elif _MODE.value == 'selftrain':
    selftrain.run_selftrain(_CONFIG.value, _WORKDIR.value)
  elif _MODE.value == 'finetune':
    finetune.finetune(_CONFIG.value, _WORKDIR.value)
  elif _MODE.value == 'eval':
    evaluate.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)
  else:
    prompts = list(_PROMPT.value)
    if _PROMPTS_FILE.value:
      with open(_PROMPTS_FILE.value) as f:
        prompts += [line.rstrip('\n') for line in f if line.strip()]
    sample.sample_checkpoint(_CONFIG.value, _WORKDIR.value, prompts)


def _run_app():
  """app.run(main), with an override that names no config key (a typo) reported as one line:
  ml_collections raises it while absl parses the flags, before main starts."""
  started = []
  try:
    app.run(lambda argv: started.append(1) or main(argv))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if started:
      raise
    message = e
    while isinstance(message, BaseException) and message.args:  # AttributeError(KeyError(..)).
      message = message.args[0]
    message = str(message).replace('\n', '. ')
    print(f'error: a --config override names no config key: {message} (--dry_run --verbose '
          'prints every key)', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  _run_app()
