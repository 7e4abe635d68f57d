"""A new user's first hour (issue 35): every bad input is one `error:` line and exit 2 before
anything is written; results never describe work that did not happen (a sweep rerun with other
settings, a variant named twice, feedback prompts in another layout); --help exits 0."""
import glob
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

import launch
from configs import feedback_finetune
from configs import tiny
from selffb import errors
from selffb.assemble import checks
from selffb.assemble import ranges
from selffb.feedback import records
from selffb.modes import dry_run
from selffb.modes import finetune as finetune_mode
from selffb.modes import run_config
from selffb.modes import selftrain as selftrain_mode
from selffb.modes import train as train_mode
from selffb.sweep import plan
from selffb.sweep import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not p.endswith('__init__.py'))
# The mode each shipped config runs with (the others train).
MODE_OF = {'feedback_finetune': 'finetune', 'selfimprove_addition': 'selftrain',
           'selfimprove_paper': 'selftrain', 'selfimprove_unsupervised': 'selftrain'}
RUN = {'train': train_mode.train_and_evaluate, 'selftrain': selftrain_mode.run_selftrain,
       'finetune': finetune_mode.finetune}


def shipped_config(name):
  spec = importlib.util.spec_from_file_location(f'shipped_{name}',
                                                os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def outside(key):
  """A value outside RANGES[key]: below its low end, or above its high end when that is 0
  and unbounded below (never, today)."""
  low, high, low_in, _ = ranges.RANGES[key]
  if isinstance(low, int) and high == math.inf:
    return low - 1
  return low - 1 if low_in else low  # Below a closed low end, or the open end itself.


def set_key(config, key, value):
  *path, leaf = key.split('.')
  node = config
  for part in path:
    node = node[part]
  node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], float) else value


# ---- Every numeric key of every shipped config, out of range: refused, named, nothing written.

@pytest.mark.parametrize('name', SHIPPED)
def test_every_numeric_key_out_of_range_is_refused_before_the_workdir(name, tmp_path):
  mode, workdir = MODE_OF.get(name, 'train'), str(tmp_path / 'run')
  # The mode's own entry, as launch.py calls it, for one key; the check it runs for the rest.
  key = 'train.num_steps'
  c = shipped_config(name)
  set_key(c, key, outside(key))
  with pytest.raises(errors.ConfigError, match=f'config.{key}='):
    RUN[mode](c, workdir)
  assert not os.path.exists(workdir)
  for key in ranges.RANGES:
    c = shipped_config(name)
    set_key(c, key, outside(key))
    with pytest.raises(errors.ConfigError) as raised:
      checks.check_config(c, 1, dry_run.mode_inputs(mode, workdir), workdir)
    assert f'config.{key}=' in str(raised.value), key
  assert not os.path.exists(workdir)


@pytest.mark.e2e
@pytest.mark.parametrize('key', ['optim.lr', 'data.batch_size', 'optim.b2', 'selftrain.theta'])
def test_an_out_of_range_key_through_launch_is_one_line_and_exit_2(key, tmp_path):
  workdir = tmp_path / 'run'
  out = launch_run('--config=configs/tiny.py', f'--workdir={workdir}',
                   f'--config.{key}={outside(key)}')
  assert out.returncode == 2 and 'Traceback' not in out.stderr, out.stderr[-2000:]
  assert f'config.{key}=' in out.stderr and not workdir.exists()


def test_feedback_example_digits_are_checked(tmp_path):
  for bad, fragment in (((0,), 'operand lengths from 1 to 18'), ((-1,), 'from 1 to 18'),
                        ((), 'non-empty'), ((1,), 'at most 50 problems')):
    c = feedback_finetune.get_config()
    c.data.feedback.example_digits = bad
    with pytest.raises(errors.ConfigError, match=fragment):
      finetune_mode.finetune(c, str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()


def test_a_workdir_that_cannot_be_a_directory_is_refused(tmp_path):
  (tmp_path / 'file').write_text('x')
  for workdir, fragment in ((tmp_path / 'file', 'is a file'),
                            (tmp_path / 'file' / 'run', 'which is a file')):
    with pytest.raises(errors.ConfigError, match=fragment):
      train_mode.train_and_evaluate(tiny.get_config(), str(workdir))
  assert (tmp_path / 'file').read_text() == 'x'


# ---- Sweeps: a rerun with other settings, a variant named twice. ----

def ablation(path, body):
  path.write_text('from configs import tiny\n\n\ndef get_config(arg=None):\n  return '
                  f'tiny.get_config(arg)\n\n\ndef sweep():\n  return {body}\n')
  return str(path)


def sweep_config(path, **overrides):
  spec = importlib.util.spec_from_file_location('first_hour_ablation', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c, _ = plan.apply(module.get_config(), overrides)
  c.lock()
  return c


def test_a_variant_named_twice_is_refused(tmp_path):
  path = ablation(tmp_path / 'twice.py', "{'mode': 'train', 'seeds': (0,), 'control': 'ce',\n"
                  "          'variants': {'ce': {'feedback.loss': 'ce'},\n"
                  "                       'ce': {'feedback.loss': 'one_minus'}}}")
  with pytest.raises(plan.SweepError, match="line 11: 'ce' twice in one dict"):
    run.run_sweep(sweep_config(path), path, {}, str(tmp_path / 'sweep'))
  assert not (tmp_path / 'sweep').exists()


def test_rerunning_a_finished_sweep_with_another_setting_is_refused(tmp_path):
  path = ablation(tmp_path / 'one.py', "{'mode': 'train', 'seeds': (0,), 'control': None, "
                  "'variants': {'ce': {'feedback.loss': 'ce'}}}")
  workdir = tmp_path / 'sweep'
  ran = plan.build(sweep_config(path, **{'train.num_steps': 10}), path,
                   {'train.num_steps': 10}, str(workdir), 1)
  entry = tmp_path / 'sweep' / 'ce' / 'seed_0'  # A finished entry, as its run leaves it.
  entry.mkdir(parents=True)
  (entry / 'config.json').write_text(ran.entries[0].config.to_json())
  (entry / 'summary.json').write_text('{}')
  with pytest.raises(plan.SweepError, match=r'train.num_steps 10 \(run, e.g. ce/seed_0\) vs 20.*'
                     'new --workdir'):
    run.run_sweep(sweep_config(path, **{'train.num_steps': 20}), path, {'train.num_steps': 20},
                  str(workdir))
  assert sorted(os.listdir(workdir)) == ['ce']  # No sweep.json, no report.
  assert run.changed_problems(ran) is None  # The same settings: skipped as finished.


# ---- Recorded feedback in another prompt layout than its starting run's. ----

def test_feedback_prompts_in_another_layout_are_refused_naming_the_line(tmp_path):
  path = tmp_path / 'f.jsonl'
  path.write_text('\n'.join(json.dumps(r) for r in (
      {'prompt': '210+340=', 'response': '550', 'rating': 5},
      {'prompt': '12+5=', 'response': '17', 'rating': 5},
      {'prompt': '4+4=', 'response': '8', 'rating': 5})) + '\n')
  c = feedback_finetune.get_config()  # Aligned addition, as the default run.
  c.data.feedback.update(train_path=str(path), errors='skip')
  c.data.data_dir = str(tmp_path / 'data')
  c.data.update(batch_size=16, eval_batch_size=16)  # For the 8 test devices.
  with pytest.raises(records.RecordFileError, match=r"line 2: prompt '12\+5=' is not an aligned "
                     'addition problem'):
    finetune_mode.finetune(c, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists() and not (tmp_path / 'data').exists()


# ---- launch.py: bad --config files, overrides without --config, --help. ----

BAD_FILES = {'syntax.py': ('def get_config(:\n', 'syntax error at line 1'),
             'noget.py': ('X = 1\n', 'has no get_config()'),
             'wrong.py': ('def get_config():\n  return 3\n', 'returned a int, not an'),
             'raises.py': ('def get_config():\n  return 1 / 0\n', 'raised ZeroDivisionError')}


def bad_config(tmp_path, name):
  text, fragment = BAD_FILES[name]
  (tmp_path / name).write_text(text)
  return str(tmp_path / name), fragment


@pytest.mark.parametrize('name', sorted(BAD_FILES) + ['missing.py'])
def test_a_bad_config_file_is_one_line(name, tmp_path, capsys):
  path, fragment = (bad_config(tmp_path, name) if name in BAD_FILES else
                    (str(tmp_path / name), 'is not a file'))
  with pytest.raises(SystemExit) as raised:
    launch._run_app(['launch.py', f'--config={path}', f'--workdir={tmp_path / "run"}'])
  err = capsys.readouterr().err
  assert raised.value.code == 2 and err.count('\n') == 1 and err.startswith('error: ')
  assert fragment in err and not (tmp_path / 'run').exists()


def test_overrides_without_config_are_applied_to_the_run_config(tmp_path):
  (tmp_path / 'config.json').write_text(tiny.get_config().to_json())
  c = run_config.with_overrides(str(tmp_path), {'sample.temperature': '0',
                                                'sample.top_k': '3'})
  assert c.sample.temperature == 0.0 and c.sample.top_k == 3
  assert run_config.load(c, str(tmp_path)).sample.temperature == 0.0
  with pytest.raises(errors.ConfigError, match='model.d_model is fixed by the run'):
    run_config.with_overrides(str(tmp_path), {'model.d_model': '8'})
  with pytest.raises(errors.ConfigError, match='sample.temprature names no config key'):
    run_config.with_overrides(str(tmp_path), {'sample.temprature': '0'})
  with pytest.raises(errors.ConfigError, match='sample.temperature=hot'):
    run_config.with_overrides(str(tmp_path), {'sample.temperature': 'hot'})


def test_split_run_overrides_only_without_config():
  argv = ['launch.py', '--mode=sample', '--workdir=w', '--config.sample.temperature=0']
  assert launch._split_run_overrides(argv) == (argv[:3], {'sample.temperature': '0'})
  with_file = argv + ['--config=configs/tiny.py']
  assert launch._split_run_overrides(with_file) == (with_file, {})


def launch_run(*args):
  env = dict(os.environ, XLA_FLAGS='', PYTHONUNBUFFERED='1')
  return subprocess.run([sys.executable, 'launch.py', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.e2e
def test_launch_help_exits_0():
  out = launch_run('--help')
  assert out.returncode == 0 and '--workdir' in out.stdout + out.stderr


@pytest.mark.e2e
@pytest.mark.parametrize('name', sorted(BAD_FILES) + ['missing.py'])
def test_launch_refuses_a_bad_config_file_in_one_line(name, tmp_path):
  path, fragment = (bad_config(tmp_path, name) if name in BAD_FILES else
                    (str(tmp_path / name), 'is not a file'))
  out = launch_run(f'--config={path}', f'--workdir={tmp_path / "run"}')
  assert out.returncode == 2 and out.stderr.strip().count('\n') == 0, out.stderr
  assert fragment in out.stderr and not (tmp_path / 'run').exists()


@pytest.mark.e2e
def test_launch_samples_with_only_overrides_of_the_run_config(tmp_path):
  workdir = tmp_path / 'run'
  out = launch_run('--config=configs/tiny.py', f'--workdir={workdir}',
                   '--config.train.num_steps=10', f'--config.data.data_dir={tmp_path / "data"}')
  assert out.returncode == 0, out.stderr[-3000:]
  out = launch_run('--mode=sample', f'--workdir={workdir}', '--config.sample.temperature=0',
                   '--config.sample.seed=5', '--prompt=1+2=')
  assert out.returncode == 0, out.stderr[-3000:]
  row = json.loads((workdir / 'samples.jsonl').read_text().splitlines()[-1])
  assert row['prompt'] == '1+2=' and row['temperature'] == 0 and row['seed'] == 5
  out = launch_run('--mode=sample', f'--workdir={workdir}', '--config.model.d_model=8',
                   '--prompt=1+2=')
  assert out.returncode == 2 and 'model.d_model is fixed by the run' in out.stderr


@pytest.mark.e2e
@pytest.mark.parametrize('args, fragment', [
    (['--mode=train'], '--mode=train needs --config'),
    (['--mode=sweep_report', '--config.seed=1'], 'without --config'),
    (['--mode=eval', '--sweep_index=0'], '--sweep_index applies to'),
    (['--mode=eval', 'extra'], 'unexpected arguments')])
def test_launch_usage_mistakes_are_one_line_and_exit_2(args, fragment, tmp_path):
  out = launch_run(f'--workdir={tmp_path / "run"}', *args)
  assert out.returncode == 2 and out.stderr.strip().count('\n') == 0, out.stderr
  assert out.stderr.startswith('error: ') and fragment in out.stderr
  assert not (tmp_path / 'run').exists()
