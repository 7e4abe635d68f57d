"""Sweeps: planning and checking an ablation file, running its entries (resuming, skipping the
finished ones), the submitit path, and the report rebuilt from the sub-workdirs."""
import csv
import importlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs import default
from selffb import checkpoint
from selffb import metrics
from selffb import provenance
from selffb import runtime
from selffb.assemble import checks
from selffb.assemble import resume
from selffb.modes import run_config
from selffb.sweep import aggregate
from selffb.sweep import plan
from selffb.sweep import run
from selffb.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'configs', 'ablations', 'tiny.py')
STEPS = {'train.num_steps': 10}


def ablation(path, variants, seeds=(0,), mode='train', control=None, base='tiny', extra='',
             share=False):
  """Writes an ablation file over configs/<base>.py; returns its path."""
  path.write_text(
      f'from configs import {base}\n\n\ndef get_config(arg=None):\n'
      f'  c = {base}.get_config(arg)\n{extra}  return c\n\n\ndef sweep():\n'
      f'  return {{"mode": {mode!r}, "seeds": {tuple(seeds)!r}, "control": {control!r}, '
      f'"variants": {variants!r}, "share_round0": {share!r}}}\n')
  return str(path)


def load_config(config_file, overrides=None):
  """The config launch.py gives the sweep: get_config() with the overrides, locked."""
  spec = importlib.util.spec_from_file_location('test_ablation', config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c, _ = plan.apply(module.get_config(), overrides or {})
  c.lock()
  return c


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def floats(row, key):
  return float(row[key]) if row[key] else float('nan')


# ---- Planning: every problem before anything runs; the commands. ----

def test_misspelt_keys_of_every_variant_fail_at_once_and_write_nothing(tmp_path):
  path = ablation(tmp_path / 'bad.py', {
      'a': {'feedback.los': 'ce'},
      'b': {'optim.lrr': 1e-3, 'train.num_steps': 5, 'feedback': 'ce'},
      'c': {'feedback.loss': 'ce'}}, seeds=(0, 1))
  workdir = str(tmp_path / 'sweep')
  with pytest.raises(plan.SweepError) as e:
    run.run_sweep(load_config(path), path, {}, workdir)
  message = str(e.value)
  assert '(3 problem(s))' in message
  for fragment in ("variant 'a': feedback.los names no config key (did you mean feedback.loss?)",
                   "variant 'b': optim.lrr names no config key (did you mean optim.lr?)",
                   "variant 'b': feedback is a section"):
    assert fragment in message, fragment
  assert not os.path.exists(workdir)


def test_bad_values_of_every_variant_fail_before_any_run(tmp_path):
  path = ablation(tmp_path / 'bad.py', {
      'a': {'feedback.loss': 'cee', 'model.num_heads': 3},
      'b': {'optim.lr': 'fast'},
      'c': {'feedback.loss': 'ce'}})
  with pytest.raises(plan.SweepError) as e:
    run.print_plan(load_config(path), path, {}, str(tmp_path / 'sweep'))
  message = str(e.value)
  assert "variant 'a': config.feedback.loss='cee'" in message
  assert "variant 'a': " in message and 'num_heads=3' in message
  assert "variant 'b': optim.lr='fast' is a str; the key holds a float." in message
  assert "variant 'c'" not in message


@pytest.mark.parametrize('spec, fragment', [
    ([], 'returned a list'),
    ({'mode': 'train', 'seeds': (0,), 'variants': {'a': {}}}, "no 'control'"),
    ({'mode': 'eval', 'seeds': (0,), 'control': None, 'variants': {'a': {}}}, "['mode']='eval'"),
    ({'mode': 'train', 'seeds': (0, 0), 'control': None, 'variants': {'a': {}}}, 'distinct'),
    ({'mode': 'train', 'seeds': (0,), 'control': 'ce', 'variants': {'a': {}}}, 'not a variant'),
    ({'mode': 'train', 'seeds': (0,), 'control': None, 'variants': {'a b': {}}}, 'directory'),
    ({'mode': 'train', 'seeds': (0,), 'control': None, 'variants': {'a': {'seed': 1}}},
     "sets 'seed'"),
    ({'mode': 'train', 'seeds': (0,), 'control': None, 'variants': {'a': {}}, 'shared': True},
     "unknown key 'shared'"),
    ({'mode': 'selftrain', 'seeds': (0,), 'control': None, 'variants': {'a': {}},
      'share_round0': 1}, "['share_round0']=1: True or False"),
    ({'mode': 'train', 'seeds': (0,), 'control': None, 'variants': {'a': {}},
      'share_round0': True}, "mode is 'train', not 'selftrain'"),
    ({'mode': 'selftrain', 'seeds': (0,), 'control': None, 'share_round0': True,
      'variants': {'a': {'selftrain.theta': 0.5}, 'b': {'optim.lr': 1e-3}}},
     "variant 'b' sets optim.lr: with share_round0 a variant sets only selftrain.* keys"),
    ({'mode': 'selftrain', 'seeds': (0,), 'control': None, 'share_round0': True,
      'variants': {'a': {'selftrain.init_workdir': '/x'}}}, 'and not selftrain.init_workdir'),
])
def test_malformed_sweeps_are_named(spec, fragment):
  found = plan.spec_problems(spec)
  assert any(fragment in p for p in found), found


def test_sweep_index_out_of_range_is_a_clear_error(tmp_path):
  workdir = str(tmp_path / 'sweep')
  with pytest.raises(plan.SweepError, match=r'--sweep_index=4 is out of range: the sweep tiny '
                     r'has 4 entries, 0\.\.3 \(--mode=sweep_plan lists them\)'):
    run.run_sweep(load_config(TINY), TINY, {}, workdir, index=4)
  assert not os.path.exists(workdir)


def parse_command(args):
  """The config launch.py would build from a printed command's flags."""
  values = flags.FlagValues()
  argv = ['launch.py'] + [a for a in args[2:] if a.startswith('--config')]
  holder = config_flags.DEFINE_config_file('config', None, '', flag_values=values,
                                           lock_config=True, sys_argv=argv)
  values(argv)
  return holder.value


def test_each_printed_command_builds_its_entry_config(tmp_path, capsys):
  overrides = {'train.num_steps': 7, 'data.addition.test_digits': (2, 5)}
  config, workdir = load_config(TINY, overrides), str(tmp_path / 'sweep')
  sw, _ = run.prepare(config, TINY, overrides, workdir, None, 'local')
  printed = run.print_plan(config, TINY, overrides, workdir)
  out = capsys.readouterr().out
  assert len(printed) == 4 and all(c in out for c in printed)
  assert [(e.variant, e.seed) for e in sw.entries] == [
      ('ce', 0), ('one_minus', 0), ('ce', 1), ('one_minus', 1)]  # Seed by seed.
  for e, command in zip(sw.entries, printed):
    args = shlex.split(command)
    assert args[:3] == ['python', 'launch.py', '--mode=train']
    assert f'--workdir={workdir}/{e.variant}/seed_{e.seed}' in args
    assert parse_command(args).to_dict() == e.config.to_dict()
  assert e.config.train.num_steps == 7 and e.config.feedback.loss == 'one_minus'
  assert not os.path.exists(workdir)


# ---- Statistics on hand-made numbers. ----

def test_paired_difference_and_its_confidence_interval():
  variant = {0: 1.0, 1: 2.0, 2: 4.0, 3: 9.0}  # Seed 3 has no control run: left out.
  control = {0: 0.5, 1: 1.0, 2: 1.5}
  d = aggregate.paired_difference(variant, control)
  # Differences 0.5, 1.0, 2.5: mean 4/3, sample sd sqrt(13/12), t(0.975, 2) = 4.302652729...
  half = 4.302652729749464 * np.sqrt(13 / 12) / np.sqrt(3)
  assert d.n == 3
  assert d.mean == pytest.approx(4 / 3, abs=1e-12)
  assert d.low == pytest.approx(4 / 3 - half, abs=1e-9)
  assert d.high == pytest.approx(4 / 3 + half, abs=1e-9)
  assert d.low == pytest.approx(-1.2522, abs=1e-4) and d.high == pytest.approx(3.9189, abs=1e-4)
  one = aggregate.paired_difference({0: 2.0}, {0: 0.5})
  assert one.mean == 1.5 and np.isnan(one.low) and one.n == 1
  assert aggregate.paired_difference({1: 1.0}, {0: 1.0}).n == 0
  mean, std = aggregate.mean_std([1.0, 2.0, 4.0])
  assert mean == pytest.approx(7 / 3) and std == pytest.approx(np.std([1, 2, 4], ddof=1))
  # A diverged seed's inf or NaN is left out instead of turning the variant's row into '-'.
  assert aggregate.mean_std([1.0, float('inf'), 3.0, float('nan')]) == (2.0, np.sqrt(2))
  d = aggregate.paired_difference({0: 1.0, 1: float('nan'), 2: 4.0}, {0: 0.5, 1: 1.0, 2: 1.5})
  assert d.n == 2 and d.mean == pytest.approx(1.5)


# ---- Provenance and old runs. ----

def test_provenance_records_git_and_versions_and_survives_without_git(monkeypatch, tmp_path):
  got = provenance.collect()
  assert set(got['versions']) == {'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain'}
  assert all(got['versions'].values())
  assert len(got['git_revision']) == 40 and isinstance(got['git_dirty'], bool)
  monkeypatch.setenv('PATH', str(tmp_path))  # No git on the path.
  got = provenance.collect()
  assert got['git_revision'] is None and got['git_dirty'] is None
  provenance.record(str(tmp_path))
  provenance.record(str(tmp_path))  # A resumed run appends its session.
  assert len(json.load(open(tmp_path / 'provenance.json'))['sessions']) == 2


def test_a_run_saved_before_config_slurm_still_evaluates(tmp_path):
  old = default.get_config().to_dict()
  del old['slurm']
  assert resume.config_changes(old, default.get_config()) == {}
  (tmp_path / 'config.json').write_text(json.dumps(old))
  as_json = lambda c: json.loads(json.dumps(c.slurm.to_dict()))  # Tuples as JSON lists.
  assert as_json(run_config.load(None, str(tmp_path))) == as_json(default.get_config())


# ---- The shipped ablation files. ----

@pytest.mark.parametrize('name', sorted(
    f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs', 'ablations'))
    if f.endswith('.py') and f != '__init__.py'))
def test_every_ablation_file_is_a_valid_delta_with_a_valid_sweep(name):
  module = importlib.import_module(f'configs.ablations.{name}')
  c = module.get_config()
  assert set(metrics.flatten(c.to_dict(), '.')) == set(
      metrics.flatten(default.get_config().to_dict(), '.'))
  assert checks.problems(c, 1) == []
  spec = module.sweep()
  assert plan.spec_problems(spec) == []
  assert plan.key_problems(c, spec['variants']) == []
  c.lock()
  sw = plan.build(c, os.path.join(ROOT, 'configs', 'ablations', f'{name}.py'), {}, '/x', 1)
  assert len(sw.entries) == len(spec['variants']) * len(spec['seeds'])


# ---- SLURM through submitit: the job script from config.slurm (no cluster needed). ----

def test_slurm_jobs_take_their_settings_from_config_slurm(tmp_path, monkeypatch):
  srun = tmp_path / 'bin' / 'srun'  # submitit's SLURM executor looks for srun on the PATH.
  srun.parent.mkdir()
  srun.write_text('#!/bin/sh\n')
  srun.chmod(0o755)
  monkeypatch.setenv('PATH', f"{srun.parent}:{os.environ['PATH']}")
  overrides = {'slurm.partition': 'gpu', 'slurm.account': 'lab', 'slurm.qos': 'high',
               'slurm.nodes': 2, 'slurm.gpus_per_node': 4, 'slurm.cpus_per_task': 16,
               'slurm.mem_gb': 64, 'slurm.timeout_min': 90,
               'slurm.setup': ('module load cuda',), 'slurm.extra': ('reservation=r1',)}
  config = load_config(TINY, overrides)
  sw, entries = run.prepare(config, TINY, overrides, str(tmp_path / 'sweep'), 1, 'slurm')
  ex = run.make_executor(str(tmp_path / 'jobs'), 'slurm')
  ex.update_parameters(**run.executor_parameters(entries[0].config.slurm, 'selffb-tiny'))
  # The sbatch script submitit would submit (a private method: no cluster here to submit to).
  script = ex._executor._make_submission_file_text('COMMAND', 'uid')  # pylint: disable=W0212
  for line in ('#SBATCH --partition=gpu', '#SBATCH --account=lab', '#SBATCH --qos=high',
               '#SBATCH --nodes=2', '#SBATCH --gpus-per-node=4', '#SBATCH --cpus-per-task=16',
               '#SBATCH --mem=64GB', '#SBATCH --time=90', '#SBATCH --ntasks-per-node=1',
               '#SBATCH --reservation=r1', 'module load cuda'):
    assert line in script, line
  cmd = run.job_command(sw, entries[0])
  assert cmd[1] == plan.LAUNCH and '--sweep_index=1' in cmd and cmd[-1] == '--multihost'
  assert '--config.slurm.nodes=2' in cmd and f'--config={TINY}' in cmd
  with pytest.raises(plan.SweepError, match='slurm.nodes=2 must be 1'):
    run.prepare(config, TINY, overrides, str(tmp_path / 'sweep'), None, 'submitit_local')
  monkeypatch.setenv('PATH', str(tmp_path))  # No srun: not a SLURM cluster.
  with pytest.raises(plan.SweepError, match='no srun here'):
    run.run_sweep(config, TINY, overrides, str(tmp_path / 'sweep'), None, 'slurm')
  assert not os.path.exists(tmp_path / 'sweep')


def test_a_diverged_run_does_not_stop_the_others(tmp_path, monkeypatch):
  def fake_run(mode, entry):  # Writes what a finished train run writes, without training.
    if entry.index == 0:
      raise loop.TrainingDiverged('3 consecutive steps had a non-finite loss')
    os.makedirs(entry.workdir)
    with open(os.path.join(entry.workdir, 'metrics.jsonl'), 'w') as f:
      f.write(json.dumps({'step': 10, 'val/ce': 1.0 + entry.index}) + '\n')
    with open(os.path.join(entry.workdir, 'summary.json'), 'w') as f:
      json.dump({'steps': 10, 'best_val_ce': 1.0 + entry.index, 'wall_s': 1.0,
                 'exact_match': {'2': 0.5}}, f)
    return True

  monkeypatch.setattr(run, '_run_entry', fake_run)
  workdir = str(tmp_path / 'sweep')
  with pytest.raises(plan.SweepError, match=r'entries 0 \(ce seed 0\) diverged'):
    run.run_sweep(load_config(TINY), TINY, {}, workdir)
  assert [r['status'] for r in read_csv(os.path.join(workdir, 'runs.csv'))] == [
      'not started', 'finished', 'finished', 'finished']
  results = {r['variant']: r for r in read_csv(os.path.join(workdir, 'results.csv'))}
  assert results['ce']['seeds_finished'] == '1' and results['ce']['val_ce_mean'] == '3.0'
  assert results['one_minus']['paired_seeds'] == '1'  # Seed 1 only.
  assert results['one_minus']['val_ce_diff'] == '1.0' and results['one_minus']['val_ce_lo'] == ''


# ---- End to end: the tiny sweep, cut after its first run, then finished. ----

def snapshot(directory):
  """{path: mtime} of every file under a run's directory."""
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(directory) for f in files}


@pytest.fixture(scope='module')
def tiny_sweep(tmp_path_factory):
  """sweep_index=0 (as if the sweep were stopped after its first run), then the whole sweep,
  then again (nothing left to run)."""
  workdir = str(tmp_path_factory.mktemp('tiny_sweep'))
  config = load_config(TINY, STEPS)
  first = run.run_sweep(config, TINY, STEPS, workdir, index=0)
  files = snapshot(os.path.join(workdir, 'ce', 'seed_0'))
  runs_md = open(os.path.join(workdir, 'results.md')).read()
  rest = run.run_sweep(config, TINY, STEPS, workdir)
  again = run.run_sweep(config, TINY, STEPS, workdir)
  return {'workdir': workdir, 'first': first, 'rest': rest, 'again': again, 'files': files,
          'after_first_md': runs_md}


@pytest.mark.e2e
def test_a_rerun_skips_finished_entries_and_runs_the_rest(tiny_sweep):
  t = tiny_sweep
  assert [r['status'] for r in t['first']] == ['done']
  assert [r['status'] for r in t['rest']] == ['skipped', 'done', 'done', 'done']
  assert [r['status'] for r in t['again']] == ['skipped'] * 4
  assert snapshot(os.path.join(t['workdir'], 'ce', 'seed_0')) == t['files']  # Not retrained.
  # The report of a sweep in progress shows what is missing.
  assert '1 of 4 runs finished' in t['after_first_md']
  assert '| 1 | one_minus | 0 | not started |' in t['after_first_md']


@pytest.mark.e2e
def test_a_rerun_with_another_setting_is_refused_naming_it(tiny_sweep):
  workdir, changed = tiny_sweep['workdir'], {'train.num_steps': 12}
  before = snapshot(workdir)
  with pytest.raises(plan.SweepError, match=r'train.num_steps 10 \(run, e.g. ce/seed_0\) vs 12; '
                     'skipping them would report'):
    run.run_sweep(load_config(TINY, changed), TINY, changed, workdir)
  assert snapshot(workdir) == before  # sweep.json and the report untouched.


@pytest.mark.e2e
def test_the_report_holds_every_run_and_the_means_over_seeds(tiny_sweep):
  workdir = tiny_sweep['workdir']
  summaries, rows = {}, {}
  for v in ('ce', 'one_minus'):
    for s in (0, 1):
      d = os.path.join(workdir, v, f'seed_{s}')
      summaries[v, s] = json.load(open(os.path.join(d, 'summary.json')))
      rows[v, s] = [json.loads(l) for l in open(os.path.join(d, 'metrics.jsonl'))]
      got = json.load(open(os.path.join(d, 'provenance.json')))['sessions']
      assert len(got) == 1 and got[0]['versions']['jax']
  runs = read_csv(os.path.join(workdir, 'runs.csv'))
  assert [(r['variant'], r['seed'], r['status']) for r in runs] == [
      ('ce', '0', 'finished'), ('one_minus', '0', 'finished'), ('ce', '1', 'finished'),
      ('one_minus', '1', 'finished')]
  for r in runs:
    key = (r['variant'], int(r['seed']))
    assert float(r['val_ce']) == summaries[key]['best_val_ce']
    assert float(r['exact_match/3']) == summaries[key]['exact_match']['3']
    assert float(r['train_loss']) == [x for x in rows[key] if 'train/loss' in x][-1]['train/loss']
    assert float(r['tokens_per_s']) == np.median(
        [x['train/tokens_per_s'] for x in rows[key] if 'train/tokens_per_s' in x])
  results = {r['variant']: r for r in read_csv(os.path.join(workdir, 'results.csv'))}
  assert list(results) == ['ce', 'one_minus']
  for v, r in results.items():
    ces = [summaries[v, s]['best_val_ce'] for s in (0, 1)]
    assert r['seeds_finished'] == '2' and r['control'] == str(v == 'ce')
    assert floats(r, 'val_ce_mean') == pytest.approx(np.mean(ces), abs=1e-12)
    assert floats(r, 'val_ce_std') == pytest.approx(np.std(ces, ddof=1), abs=1e-12)
    assert floats(r, 'wall_s_mean') == pytest.approx(
        np.mean([summaries[v, s]['wall_s'] for s in (0, 1)]), abs=1e-9)
  d = [summaries['one_minus', s]['best_val_ce'] - summaries['ce', s]['best_val_ce']
       for s in (0, 1)]
  half = 12.706204736174707 * np.std(d, ddof=1) / np.sqrt(2)  # t(0.975, 1).
  one = results['one_minus']
  assert one['paired_seeds'] == '2'
  assert floats(one, 'val_ce_diff') == pytest.approx(np.mean(d), abs=1e-12)
  assert floats(one, 'val_ce_lo') == pytest.approx(np.mean(d) - half, abs=1e-9)
  assert floats(one, 'val_ce_hi') == pytest.approx(np.mean(d) + half, abs=1e-9)
  md = open(os.path.join(workdir, 'results.md')).read()
  assert '4 of 4 runs finished' in md
  ce_mean = np.mean([summaries['ce', s]['best_val_ce'] for s in (0, 1)])
  assert f'| ce (control) | 2/2 | {ce_mean:.4g} ± ' in md
  assert '| one_minus | 2 | ' in md  # The difference table.
  for png in ('val_ce.png', 'exact_match.png'):
    data = open(os.path.join(workdir, png), 'rb').read()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 5000, png
  layout = json.load(open(os.path.join(workdir, 'sweep.json')))
  assert [e['workdir'] for e in layout['entries']] == [
      'ce/seed_0', 'one_minus/seed_0', 'ce/seed_1', 'one_minus/seed_1']


@pytest.mark.e2e
def test_rerunning_one_entry_in_a_fresh_dir_reproduces_it_bitwise(tiny_sweep, tmp_path):
  workdir = str(tmp_path / 'again')
  assert [r['status'] for r in run.run_sweep(load_config(TINY, STEPS), TINY, STEPS, workdir,
                                             index=1)] == ['done']
  a, b = (os.path.join(w, 'one_minus', 'seed_0') for w in (tiny_sweep['workdir'], workdir))
  strip = lambda rows: [{k: v for k, v in r.items() if k != 'train/tokens_per_s'} for r in rows]
  assert strip(aggregate.read_rows(os.path.join(a, 'metrics.jsonl'))) == strip(
      aggregate.read_rows(os.path.join(b, 'metrics.jsonl')))
  timing = ('wall_s', 'compile_s')
  assert ({k: v for k, v in json.load(open(os.path.join(a, 'summary.json'))).items()
           if k not in timing} ==
          {k: v for k, v in json.load(open(os.path.join(b, 'summary.json'))).items()
           if k not in timing})
  want, got = (checkpoint.restore(checkpoint.make_manager(d, 2), None, None) for d in (a, b))
  for x, y in zip(jax.tree.leaves(want[1:3]), jax.tree.leaves(got[1:3])):
    np.testing.assert_array_equal(x, y)


# ---- Through launch.py: the plan, errors, submitit's local executor, a stop and a resume. ----

def launch(*args, wait=True):
  cmd = [sys.executable, 'launch.py', *args]
  env = dict(os.environ, XLA_FLAGS='', PYTHONUNBUFFERED='1')  # One CPU device, as a user runs.
  if wait:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


@pytest.mark.e2e
def test_launch_sweep_plan_prints_the_commands_and_bad_input_is_one_line(tmp_path):
  workdir = str(tmp_path / 'sweep')
  out = launch('--mode=sweep_plan', '--config=configs/ablations/tiny.py', f'--workdir={workdir}',
               '--config.train.num_steps=7')
  assert out.returncode == 0, out.stderr[-3000:]
  commands = [l.strip() for l in out.stdout.splitlines() if l.strip().startswith('python')]
  assert len(commands) == 4
  assert commands[3] == ('python launch.py --mode=train --config=configs/ablations/tiny.py '
                         f'--workdir={workdir}/one_minus/seed_1 --config.train.num_steps=7 '
                         '--config.feedback.loss=one_minus --config.seed=1')
  assert '--sweep_index=$I' in out.stdout
  out = launch('--mode=sweep', '--config=configs/ablations/tiny.py', f'--workdir={workdir}',
               '--sweep_index=9')
  assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith(
      'error: --sweep_index=9 is out of range: the sweep tiny has 4 entries')
  bad = ablation(tmp_path / 'bad.py', {'a': {'feedback.los': 'ce'}, 'b': {'optim.lrr': 1.0}})
  out = launch('--mode=sweep', f'--config={bad}', f'--workdir={workdir}')
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert "variant 'a': feedback.los" in out.stderr and "variant 'b': optim.lrr" in out.stderr
  assert not os.path.exists(workdir)


@pytest.mark.e2e
def test_the_submitit_local_executor_runs_one_variant(tmp_path):
  path = ablation(tmp_path / 'one.py', {'ce': {'feedback.loss': 'ce'}})
  workdir = str(tmp_path / 'sweep')
  out = launch('--mode=sweep', '--sweep_executor=submitit_local', f'--config={path}',
               f'--workdir={workdir}', '--config.train.num_steps=10')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'submitted as job' in out.stderr and '| done (job ' in out.stderr
  summary = json.load(open(os.path.join(workdir, 'ce', 'seed_0', 'summary.json')))
  assert summary['steps'] == 10
  logs = [os.path.join(workdir, 'submitit', f) for f in os.listdir(os.path.join(workdir,
                                                                                'submitit'))]
  job_log = ''.join(open(f).read() for f in logs if f.endswith(('_log.out', '_log.err')))
  assert '--sweep_index=0' in job_log and 'sweep 1/1 | ce seed 0 | done' in job_log
  (row,) = read_csv(os.path.join(workdir, 'results.csv'))
  assert row['seeds_finished'] == '1' and float(row['val_ce_mean']) == summary['best_val_ce']


def wait_for_step(path, step, proc, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, proc.communicate()
    if os.path.exists(path):
      steps = [r['step'] for r in aggregate.read_rows(path)[:-1]]
      if steps and max(steps) >= step:
        return
    time.sleep(0.05)
  raise TimeoutError(f'step {step} not reached')


@pytest.mark.e2e
def test_a_sweep_stopped_mid_run_resumes_that_run_then_skips_it(tmp_path):
  path = ablation(tmp_path / 'two.py', {'ce': {'feedback.loss': 'ce'}}, seeds=(0, 1))
  workdir = str(tmp_path / 'sweep')
  args = ('--mode=sweep', f'--config={path}', f'--workdir={workdir}',
          '--config.train.num_steps=300', '--config.train.checkpoint_every=20',
          '--config.train.eval_every=50', '--config.train.log_every=10')
  proc = launch(*args, wait=False)
  wait_for_step(os.path.join(workdir, 'ce', 'seed_0', 'metrics.jsonl'), 40, proc)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-3000:]
  assert 'stopped by SIGTERM' in stderr and 'sweep stopped in entry 0' in stderr
  assert not os.path.exists(os.path.join(workdir, 'ce', 'seed_1'))
  assert '| 0 | ce | 0 | unfinished (step ' in open(os.path.join(workdir, 'results.md')).read()
  out = launch(*args)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'resumed from the checkpoint at step' in out.stderr
  assert [r['status'] for r in read_csv(os.path.join(workdir, 'runs.csv'))] == ['finished'] * 2
  out = launch(*args)
  assert out.returncode == 0 and out.stderr.count('skipped (finished)') == 2


SELF_EXTRA = ''.join(f'  c.{k} = {v!r}\n' for k, v in {
    'data.addition.format': 'aligned', 'data.addition.position_shift': 1,
    'data.addition.test_digits': (2, 3, 4), 'train.num_steps': 10, 'selftrain.rounds': 1,
    'selftrain.start_digits': 0, 'selftrain.prompts_per_round': 16,
    'selftrain.steps_per_round': 5, 'selftrain.warmup_steps': 1,
    'selftrain.val_per_length': 8, 'selftrain.weights.verifier': 0.0,
    'selftrain.weights.format': 1.0, 'selftrain.theta': 0.0}.items())


@pytest.mark.e2e
def test_a_selftrain_sweep_reports_rounds(tmp_path):
  path = ablation(tmp_path / 'self.py', {'ce': {'feedback.loss': 'ce'},
                                         'one_minus': {'feedback.loss': 'one_minus'}},
                  mode='selftrain', control='ce', extra=SELF_EXTRA)
  workdir = str(tmp_path / 'sweep')
  assert [r['status'] for r in run.run_sweep(load_config(path), path, {}, workdir)] == [
      'done', 'done']
  summary = json.load(open(os.path.join(workdir, 'ce', 'seed_0', 'summary.json')))
  assert summary['rounds'] == 1 and summary['final']['round'] == 1
  (row,) = [r for r in read_csv(os.path.join(workdir, 'runs.csv')) if r['variant'] == 'ce']
  assert float(row['val_exact']) == summary['final']['val_exact']
  assert float(row['test_exact/4']) == summary['final']['test']['4']
  assert float(row['steps']) == 15  # Round 0 and round 1.
  for png in ('val_ce.png', 'test_exact.png', 'rounds.png'):
    assert os.path.getsize(os.path.join(workdir, png)) > 5000, png
  # Per variant and round: what was kept, its precision, test exact match per length.
  by_round = read_csv(os.path.join(workdir, 'rounds.csv'))
  assert [(r['variant'], r['round']) for r in by_round] == [
      ('ce', '0'), ('ce', '1'), ('one_minus', '0'), ('one_minus', '1')]
  r1 = json.load(open(os.path.join(workdir, 'ce', 'seed_0', 'rounds', 'r01', 'report.json')))
  assert float(by_round[1]['kept_mean']) == r1['kept'] and by_round[1]['digits'] == '4'
  assert float(by_round[1]['test_exact/4_mean']) == r1['test']['4'] and by_round[1]['seeds'] == '1'
  assert by_round[0]['kept_mean'] == ''  # Round 0 keeps nothing: it trains on the task's data.
  assert '| ce | 1 | 4 | 1 | 16 |' in open(os.path.join(workdir, 'results.md')).read()


@pytest.mark.e2e
def test_share_round0_trains_round_zero_once_per_seed(tmp_path):
  path = ablation(tmp_path / 'share.py', {'keep_all': {'selftrain.theta': 0.0},
                                          'fewer': {'selftrain.prompts_per_round': 8}},
                  mode='selftrain', extra=SELF_EXTRA, share=True)
  workdir, config = str(tmp_path / 'sweep'), load_config(path)
  base_r0 = os.path.join(workdir, 'keep_all', 'seed_0', 'rounds', 'r00')
  with pytest.raises(plan.SweepError, match=r"entries 1 \(fewer seed 0: needs entry 0\) start "
                     r"from another entry's round 0 \(share_round0\), which has not finished"):
    run.run_sweep(config, path, {}, workdir, index=1)  # Its round 0 is not trained yet.
  assert not os.path.exists(os.path.join(workdir, 'fewer')) and not os.path.exists(base_r0)
  commands = run.print_plan(config, path, {}, workdir)
  assert f'--config.selftrain.init_workdir={base_r0}' in commands[1]
  assert 'init_workdir' not in commands[0]
  assert [r['status'] for r in run.run_sweep(config, path, {}, workdir)] == ['done', 'done']
  shared_r0 = os.path.join(workdir, 'fewer', 'seed_0', 'rounds', 'r00')
  assert os.path.isdir(os.path.join(base_r0, 'checkpoints'))
  assert not os.path.exists(os.path.join(shared_r0, 'checkpoints'))  # Not trained again.
  base, shared = (json.load(open(os.path.join(d, 'report.json'))) for d in (base_r0, shared_r0))
  assert base['steps'] == 10 and shared['steps'] == 0
  assert (shared['val'], shared['test']) == (base['val'], base['test'])  # The same parameters.
  rounds = [json.load(open(os.path.join(workdir, v, 'seed_0', 'rounds', 'r01', 'report.json')))
            for v in ('keep_all', 'fewer')]
  assert [r['kept'] for r in rounds] == [16, 8]
  steps = {r['variant']: r['steps'] for r in read_csv(os.path.join(workdir, 'runs.csv'))}
  assert steps == {'keep_all': '15', 'fewer': '15'}  # Round 0's 10 steps count for both.
  with pytest.raises(plan.SweepError, match=r"config.selftrain.init_workdir='/elsewhere' takes "
                     'it from elsewhere: drop one of them'):
    run.print_plan(load_config(path, {'selftrain.init_workdir': '/elsewhere'}), path, {}, workdir)


def test_submitted_share_round0_entries_go_in_a_second_wave(tmp_path, monkeypatch):
  path = ablation(tmp_path / 'share.py', {'a': {'selftrain.theta': 0.0},
                                          'b': {'selftrain.theta': 0.5},
                                          'c': {'selftrain.theta': 0.9}},
                  seeds=(0, 1), mode='selftrain', extra=SELF_EXTRA, share=True)
  waves = []

  class Job:  # What _wait reads of a submitit job.
    job_id, paths = 'j', None

    def done(self):
      return True

    def result(self):
      return None

  def fake_submit(sw, entries, executor):  # Writes what a finished self-training run writes.
    del executor
    waves.append([e.index for e in entries])
    for e in entries:
      if e.base is None and e.seed == 0:  # Seed 1's round 0 "fails": its job writes nothing.
        os.makedirs(os.path.join(e.workdir, 'rounds', 'r00'))
        runtime.write_json(os.path.join(e.workdir, 'rounds', 'r00', 'report.json'), {})
      if e.seed == 0:
        runtime.write_json(os.path.join(e.workdir, 'summary.json'), {'wall_s': 1.0})
    return [(e, Job()) for e in entries]

  monkeypatch.setattr(run, '_submit', fake_submit)
  monkeypatch.setattr(run, '_check_available', lambda executor: None)
  monkeypatch.setattr(run, 'POLL_S', 0.0)
  monkeypatch.setattr(aggregate, 'write', lambda layout, workdir: '')  # The fakes hold no rows.
  with pytest.raises(plan.SweepError) as e:
    run.run_sweep(load_config(path), path, {}, str(tmp_path / 'sweep'), None, 'submitit_local')
  assert waves == [[0, 3], [1, 2]]  # Round-0 trainers first; seed 1's others never submitted.
  assert ('b seed 1 (not submitted: round 0 of entry 3 did not finish)' in str(e.value) and
          'c seed 1 (not submitted' in str(e.value))


def test_a_report_from_the_config_skips_the_device_checks(tmp_path):
  overrides = {'mesh.data': 16}  # More devices than this machine has: a GPU sweep's mesh.
  config = load_config(TINY, overrides)
  with pytest.raises(plan.SweepError, match='16'):
    run.print_plan(config, TINY, overrides, str(tmp_path / 'sweep'))
  text = run.report(config, TINY, overrides, str(tmp_path / 'sweep'))
  assert '| 0 | ce | 0 | not started |' in text
