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
    "read the run's own config and take only its sampling and evaluation keys: from --config, "
    'or as --config.key=value overrides without --config.',
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
# Without --config: eval's and sample's --config.key=value flags, for the run's own config.
_RUN_OVERRIDES = {}


class _QuietLibraries(std_logging.Filter):
  """Keeps selffb's INFO lines; other libraries (orbax, jax) from WARNING up, tfds from ERROR."""

  def filter(self, record):
    own = os.sep + 'selffb' + os.sep in record.pathname or record.pathname.endswith('launch.py')
    if 'tensorflow_datasets' in record.pathname:  # Warns of its own config objects: selffb's.
      return record.levelno >= std_logging.ERROR
    return own or record.levelno >= std_logging.WARNING


def main(argv):
  if len(argv) > 1:
    _error(f'unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None and _MODE.value in ('train', 'selftrain', 'finetune', 'sweep',
                                               'sweep_plan'):
    _error(f'--mode={_MODE.value} needs --config (e.g. configs/default.py, or for the sweep '
           'modes a file in configs/ablations/).')
  if _RUN_OVERRIDES and _MODE.value not in ('eval', 'sample'):
    _error(f'--config.{next(iter(_RUN_OVERRIDES))} without --config: only eval and sample '
           "apply overrides to the run's own config; give --config.")
  if _SWEEP_INDEX.value is not None and _MODE.value not in ('sweep', 'sweep_plan'):
    _error('--sweep_index applies to --mode=sweep and --mode=sweep_plan.')
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
  from selffb.modes import dry_run, evaluate, finetune, run_config, sample, selftrain, train
  config = _CONFIG.value
  if config is None and _RUN_OVERRIDES:  # eval, sample: the run's own config, overridden.
    config = run_config.with_overrides(_WORKDIR.value, _RUN_OVERRIDES)
  if _MODE.value.startswith('sweep'):
    _run_sweep_mode()
  elif _DRY_RUN.value:
    dry_run.plan(config, _WORKDIR.value, _MODE.value)
  elif _MODE.value == 'train':
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  elif _MODE.value == 'selftrain':
    selftrain.run_selftrain(_CONFIG.value, _WORKDIR.value)
  elif _MODE.value == 'finetune':
    finetune.finetune(_CONFIG.value, _WORKDIR.value)
  elif _MODE.value == 'eval':
    evaluate.evaluate_checkpoint(config, _WORKDIR.value)
  else:
    prompts = list(_PROMPT.value)
    if _PROMPTS_FILE.value:
      with open(_PROMPTS_FILE.value) as f:
        prompts += [line.rstrip('\n') for line in f if line.strip()]
    sample.sample_checkpoint(config, _WORKDIR.value, prompts)


def _flag_value(argv, name):
  """The value of --name=V or --name V in argv (the last one), or None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      value = arg.split('=', 1)[1]
    elif arg == f'--{name}' and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _config_file_problem(config_file):
  """Why the --config file cannot give a config (missing, unreadable, a syntax error, no
  get_config, another type returned), or None; checked before absl parses the flags, where
  ml_collections would end these in a traceback."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  path, sep, arg = config_file.partition(':')
  if not os.path.isfile(path):
    return f'--config={config_file}: {path} is not a file; give a config file such as ' \
           'configs/default.py (or a file in configs/ablations/ for a sweep).'
  try:
    with open(path, encoding='utf-8') as f:
      compile(f.read(), path, 'exec')
  except (OSError, UnicodeDecodeError) as e:
    return f'--config={config_file}: cannot read {path}: {e}'
  except SyntaxError as e:
    return f'--config={config_file}: syntax error at line {e.lineno} of {path}: {e.msg}.'
  spec = importlib.util.spec_from_file_location('selffb_config_check', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    get_config = getattr(module, 'get_config', None)
    if not callable(get_config):
      return f'--config={config_file}: {path} has no get_config(); a config file defines ' \
             'get_config(arg=None) returning an ml_collections.ConfigDict.'
    config = get_config(arg) if sep else get_config()
  except Exception as e:  # pylint: disable=broad-except  # The user's file: name what it raised.
    return f'--config={config_file}: loading {path} raised {type(e).__name__}: {e}'
  if not isinstance(config, ml_collections.ConfigDict):
    return f'--config={config_file}: get_config() returned a {type(config).__name__}, not an ' \
           'ml_collections.ConfigDict.'
  return None


def _split_run_overrides(argv):
  """(argv, {key: value}): without --config, the --config.key=value flags of eval and sample are
  taken out of argv, to be applied to the run's own config (run_config.CHANGEABLE keys)."""
  if _flag_value(argv, 'config') is not None:
    return argv, {}
  kept, overrides = [], {}
  for arg in argv:
    if arg.startswith('--config.') and '=' in arg:
      key, value = arg[len('--config.'):].split('=', 1)
      overrides[key] = value
    else:
      kept.append(arg)
  return kept, overrides


def _error(message):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _run_app(argv=None):
  """app.run(main), with what fails while absl parses the flags reported as one line: a --config
  file that cannot give a config, an override that names no config key (ml_collections raises it
  before main starts); --help exits 0."""
  argv = list(sys.argv if argv is None else argv)
  config_file = _flag_value(argv, 'config')
  if config_file is not None and not {'--help', '-h', '--helpshort', '--helpfull'} & set(argv):
    problem = _config_file_problem(config_file)
    if problem:
      _error(problem)
  argv, overrides = _split_run_overrides(argv)
  _RUN_OVERRIDES.update(overrides)
  started = []
  try:
    app.run(lambda args: started.append(1) or main(args), argv=argv)
  except SystemExit as e:
    if not started and e.code == 1 and {'--help', '-h', '--helpshort', '--helpfull'} & set(argv):
      sys.exit(0)  # absl's help flags exit 1 after printing the help.
    raise
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if started:
      raise
    message = e
    while isinstance(message, BaseException) and message.args:  # AttributeError(KeyError(..)).
      message = message.args[0]
    message = str(message).replace('\n', '. ')
    _error(f'a --config override names no config key: {message} (--dry_run --verbose prints '
           'every key)')


if __name__ == '__main__':
  _run_app()
