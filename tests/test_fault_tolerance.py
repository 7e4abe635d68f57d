import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import tiny
from selffb import checkpoint
from selffb import errors
from selffb import runtime
from selffb.assemble import checks
from selffb.assemble import setup as setup_lib
from selffb.data import pipeline
from selffb.modes import train as train_mode
from selffb.tasks import seq
from selffb.train import loop
from selffb.train import state as state_lib
from selffb.train import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_FLAGS = ['--config.train.num_steps=300', '--config.train.checkpoint_every=20',
             '--config.train.log_every=10', '--config.train.eval_every=50']


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('data'))


def launch(workdir, data_dir, wait=True):
  cmd = [sys.executable, 'launch.py', '--config=configs/tiny.py', f'--workdir={workdir}',
         f'--config.data.data_dir={data_dir}', *RUN_FLAGS]
  env = dict(os.environ, XLA_FLAGS='', PYTHONUNBUFFERED='1')  # One CPU device, as a user runs.
  if wait:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def wait_for_step(workdir, step, proc, timeout=120):
  path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, proc.communicate()
    if os.path.exists(path):
      steps = [json.loads(l)['step'] for l in open(path).read().splitlines()[:-1]]
      if steps and max(steps) >= step:
        return
    time.sleep(0.02)
  raise TimeoutError(f'step {step} not reached')


def final(workdir):
  return checkpoint.restore(checkpoint.make_manager(workdir, 2), None, None)


def metric_rows(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  return [{k: v for k, v in r.items() if k != 'train/tokens_per_s'} for r in rows]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('straight'))
  out = launch(workdir, data_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


@pytest.mark.e2e
def test_sigkill_then_resume_is_bitwise_equal_to_an_uninterrupted_run(uninterrupted, data_dir,
                                                                     tmp_path):
  kill_at = int(np.random.default_rng().integers(45, 250))
  workdir = str(tmp_path / 'killed')
  proc = launch(workdir, data_dir, wait=False)
  wait_for_step(workdir, kill_at, proc)
  proc.kill()
  proc.wait()
  assert final(workdir)[0] < 300, 'the run finished before it was killed'
  out = launch(workdir, data_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'resumed from the checkpoint at step' in out.stderr
  want, got = final(uninterrupted), final(workdir)
  assert got[0] == want[0] == 300
  for a, b in zip(jax.tree.leaves(want[1:3]), jax.tree.leaves(got[1:3])):
    np.testing.assert_array_equal(a, b)  # Bitwise, after a kill at step ~{kill_at}.
  assert got[3:] == want[3:]
  assert metric_rows(workdir) == metric_rows(uninterrupted)


@pytest.mark.e2e
def test_sigterm_checkpoints_and_exits_cleanly(data_dir, tmp_path):
  workdir = str(tmp_path / 'preempted')
  proc = launch(workdir, data_dir, wait=False)
  wait_for_step(workdir, 30, proc)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=60)
  assert proc.returncode == 0, stderr[-3000:]
  line = next(l for l in stderr.splitlines() if 'stopped by SIGTERM at step' in l)
  step = int(line.split('at step ')[1].split(':')[0])
  assert 30 <= step < 300 and final(workdir)[0] == step
  assert not open(os.path.join(workdir, 'lock')).read()  # Released.


@pytest.fixture(scope='module')
def setup_and_batch(data_dir):
  c = tiny.get_config()
  c.data.data_dir = data_dir
  c.mesh.data = 1
  s = setup_lib.setup(c, '', jax.devices()[:1])
  it = pipeline.make_iterator(seq.train_dataset(s.splits['train'], s.tokenizer, s.seq_len, 16, 0))
  batch = {k: v for k, v in next(it).items() if k in seq.BATCH_KEYS}
  return s, batch


def test_a_non_finite_step_is_skipped_and_counted(setup_and_batch):
  s, batch = setup_and_batch
  state, state_sh = state_lib.init_state(s, jax.random.key(0))
  p_train, _ = step_lib.compile_steps(s, state_sh)
  before = jax.device_get(state)
  bad = dict(batch, loss_mask=np.full_like(batch['loss_mask'], np.nan))
  state, m = p_train(state, bad, jax.random.key(1))
  assert int(state.step) == 1 and int(m['nonfinite_streak']) == 1 and np.isnan(m['loss'])
  for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)
  state, m = p_train(state, bad, jax.random.key(1))
  assert int(m['nonfinite_streak']) == 2
  state, m = p_train(state, batch, jax.random.key(1))
  assert int(m['nonfinite_streak']) == 0 and int(state.step) == 3
  # Skipped steps leave the whole inner optimizer state, schedule count included, untouched:
  # the first accepted step ran at warmup step 0 (lr 0), the next one moves the weights.
  state, m = p_train(state, batch, jax.random.key(1))
  assert not np.array_equal(jax.tree.leaves(state.params)[0], jax.tree.leaves(before.params)[0])


@pytest.mark.e2e
def test_nan_batches_stop_the_run_with_the_step_and_batch(data_dir, tmp_path, monkeypatch):
  encode = seq.encode_batch
  calls = []

  def poisoned(records, tokenizer, seq_len, *args):
    batch = encode(records, tokenizer, seq_len, *args)
    calls.append(1)
    if len(calls) > 25:  # Every batch after the 25th read.
      batch['loss_mask'][:] = np.nan
    return batch

  monkeypatch.setattr(seq, 'encode_batch', poisoned)
  c = tiny.get_config()
  c.data.data_dir = data_dir
  c.train.update(num_steps=200, checkpoint_every=10, max_nonfinite_steps=3)
  with pytest.raises(loop.TrainingDiverged, match=r'3 consecutive steps up to step \d+ .*'
                     r'data iterator state \{.*next_index.*\}.*checkpoint at step \d+'):
    train_mode.train_and_evaluate(c, str(tmp_path))
  step, state, _, _, _ = final(str(tmp_path))
  assert step <= 30
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert any(np.isnan(r.get('train/loss', 0)) for r in rows)  # Skipped steps are logged.
  assert not open(tmp_path / 'lock').read()


@pytest.fixture
def two_checkpoints(tmp_path, data_dir):
  """Checkpoints at steps 10 and 20, written by another process (as a restarted job finds them:
  this process's tensorstore cache has never seen their bytes)."""
  c = tiny.get_config()
  c.data.data_dir = data_dir
  c.train.update(num_steps=20, checkpoint_every=10, max_checkpoints=3)
  out = subprocess.run(
      [sys.executable, 'launch.py', '--config=configs/tiny.py', f'--workdir={tmp_path}',
       f'--config.data.data_dir={data_dir}', '--config.train.num_steps=20',
       '--config.train.checkpoint_every=10', '--config.train.max_checkpoints=3'],
      cwd=ROOT, env=dict(os.environ, XLA_FLAGS=''), capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return c, str(tmp_path)


def corrupt(workdir, step):
  """Truncates the largest file of a checkpoint's train state."""
  root = os.path.join(workdir, 'checkpoints', str(step), 'state')
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
  victim = max(files, key=os.path.getsize)
  with open(victim, 'r+b') as f:
    f.truncate(os.path.getsize(victim) // 2)


@pytest.mark.e2e
def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(two_checkpoints, caplog):
  c, workdir = two_checkpoints
  manager = checkpoint.make_manager(workdir, 3)
  assert manager.all_steps() == [10, 20]
  corrupt(workdir, 20)
  s = setup_lib.setup(c, workdir)
  state, _ = state_lib.init_state(s, jax.random.key(0))
  with caplog.at_level('WARNING'):
    step, restored, *_ = checkpoint.restore(checkpoint.make_manager(workdir, 3), state,
                                            state.params)
  assert step == 10 and int(restored.step) == 10
  assert 'checkpoint 20' in caplog.text and 'cannot be restored' in caplog.text
  corrupt(workdir, 10)
  with pytest.raises(checkpoint.CheckpointError, match='none can be restored'):
    train_mode.train_and_evaluate(c, workdir)  # Never a silent fresh start over old checkpoints.


def test_every_config_problem_is_reported_at_once():
  c = tiny.get_config()
  c.model.num_heads = 5
  c.feedback.weights.prob = -1.0
  c.optim.schedule = 'cosine'
  c.mesh.data = 3
  c.data.addition.min_digits = 0
  c.train.log_every = 0
  with pytest.raises(errors.ConfigError) as e:
    checks.check_config(c, num_devices=8)
  message = str(e.value)
  assert 'has 6 problem(s)' in message
  for fragment in ('num_heads=5', 'must be >= 0', "schedule='cosine'", 'needs 3 devices',
                   'digits range [0, 3]', 'log_every=0'):
    assert fragment in message, fragment
  checks.check_config(tiny.get_config(), num_devices=8)  # The shipped config is valid.


@pytest.mark.e2e
def test_resuming_under_a_different_model_names_the_keys(two_checkpoints):
  c, workdir = two_checkpoints
  c.model.d_model = 64
  c.optim.lr = 1e-2
  with pytest.raises(errors.ConfigError, match=r'model.d_model 32 -> 64'):
    train_mode.train_and_evaluate(c, workdir)
  c.model.d_model = 32
  c.optim.clip_norm = 0.0  # The optimizer state loses a part: a different shape.
  with pytest.raises(errors.ConfigError, match=r'optim.clip_norm 1.0 -> 0.0'):
    train_mode.train_and_evaluate(c, workdir)
  c.optim.clip_norm = 1.0
  c.train.num_steps = 30  # A new lr and step count are allowed, and logged.
  summary = train_mode.train_and_evaluate(c, workdir)
  assert summary['steps'] == 30


@pytest.mark.e2e
def test_workdir_lock(tmp_path):
  held = runtime.acquire(str(tmp_path))
  with pytest.raises(runtime.WorkdirLocked, match=f'pid {os.getpid()}'):
    runtime.acquire(str(tmp_path))
  runtime.release(held)
  runtime.release(runtime.acquire(str(tmp_path)))
  # A holder that dies leaves its name in the file: the next run takes over with a warning.
  holder = subprocess.Popen([sys.executable, '-c', (
      'import sys, time; sys.path.insert(0, "."); from selffb import runtime; '
      f'h = runtime.acquire({str(tmp_path)!r}); print("held", flush=True); time.sleep(60)')],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'held'
  with pytest.raises(runtime.WorkdirLocked, match=f'pid {holder.pid}'):
    runtime.acquire(str(tmp_path))
  holder.kill()
  holder.wait()
  runtime.release(runtime.acquire(str(tmp_path)))
