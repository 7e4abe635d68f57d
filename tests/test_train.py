import json
import os
import shutil
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from selffb import checkpoint
from selffb import errors
from selffb import optim
from selffb import sharding
from selffb.assemble import setup as setup_lib
from selffb.data import pipeline
from selffb.modes import dry_run
from selffb.modes import evaluate as evaluate_mode
from selffb.modes import run_config
from selffb.modes import sample as sample_mode
from selffb.modes import train as train_mode
from selffb.tasks import seq
from selffb.train import loop
from selffb.train import state as state_lib
from selffb.train import step as step_lib
from selffb.train import validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir, **train_overrides):
  c = tiny.get_config()
  c.data.data_dir = data_dir
  c.train.update(train_overrides)
  return c


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def first_batch(data_dir):
  s = setup_lib.setup(tiny_config(data_dir), '')
  it = pipeline.make_iterator(seq.train_dataset(s.splits['train'], s.tokenizer, s.seq_len, 16, 0))
  return {k: v for k, v in next(it).items() if k in seq.BATCH_KEYS}


def one_step(config, batch, devices):
  config.mesh.data = len(devices)
  s = setup_lib.setup(config, '', devices)
  state, state_sh = state_lib.init_state(s, jax.random.key(0))
  p_train, _ = step_lib.compile_steps(s, state_sh)
  state, metrics = p_train(state, sharding.put_batch(s.mesh, batch), jax.random.key(1))
  return jax.device_get(state), jax.device_get(metrics)


@pytest.fixture(scope='module')
def single_device_step(data_dir, first_batch):
  return one_step(tiny_config(data_dir), first_batch, jax.devices()[:1])


def test_one_step_golden_values(single_device_step):
  state, metrics = single_device_step
  assert int(state.step) == 1
  got = {k: float(metrics[k]) for k in ('loss', 'ce', 'mean_f', 'grad_norm')}
  # Recorded from this implementation (jax 0.10.2, CPU) on the tiny config's first batch (the
  # data of per-split streams); the tolerance allows XLA versions' float reassociation, not a
  # change of maths.
  golden = {'loss': 6.099680, 'ce': 6.117906, 'mean_f': 0.003549680, 'grad_norm': 4.099524}
  for k, v in golden.items():
    np.testing.assert_allclose(got[k], v, rtol=1e-4, err_msg=k)
  checksum = float(sum(jnp.sum(jnp.abs(p)) for p in jax.tree.leaves(state.params)))
  np.testing.assert_allclose(checksum, 3543.3945, rtol=1e-4)


def test_bad_mesh_is_reported_before_training(data_dir, tmp_path):
  c = tiny_config(data_dir)
  c.mesh.data = 3
  with pytest.raises(ValueError, match=r'config.mesh .* needs 3 devices but 8 are present'):
    setup_lib.setup(c, str(tmp_path))
  with pytest.raises(ValueError, match=r'config.mesh .* needs 3 devices but 8 are present'):
    train_mode.train_and_evaluate(c, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()  # Nothing written for a config that cannot run.
  c.mesh.data, c.data.batch_size = -1, 12
  with pytest.raises(ValueError, match='batch_size=12 is not divisible by the 8'):
    setup_lib.setup(c, str(tmp_path))


@pytest.mark.slow
def test_runs_differing_only_in_data_share_their_compiled_steps(data_dir):
  """The rounds of a self-training job (new seed and data, same model and optimizer) reuse one
  compiled init, train and eval step; another learning rate (baked into the step) does not."""
  def steps(change):
    c = tiny_config(data_dir)
    change(c)
    s = setup_lib.setup(c, '')
    _, state_sh = state_lib.init_state(s, jax.random.key(0))
    return step_lib.compile_steps(s, state_sh)

  base = steps(lambda c: None)
  other_data = steps(lambda c: c.update({'seed': 3, 'data': {'addition': {'num_train': 300}}}))
  other_lr = steps(lambda c: c.optim.update({'lr': 1e-3}))
  assert other_data[0] is base[0] and other_data[1] is base[1]
  assert other_lr[0] is not base[0]


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_dir):
  """A tiny run of 150 steps on operands of up to 2 digits, checkpoints every 75."""
  workdir = str(tmp_path_factory.mktemp('run'))
  c = tiny_config(data_dir, num_steps=150, checkpoint_every=75, eval_every=75, log_every=25)
  c.data.addition.update(max_digits=2, test_digits=(1, 2, 3))
  c.optim.lr = 3e-3  # Some 1- and 2-digit answers right: the greedy check is not vacuous.
  summary = train_mode.train_and_evaluate(c, workdir)
  return c, workdir, summary


@pytest.mark.slow
def test_tiny_run_trains_logs_and_reports(trained):
  c, workdir, summary = trained
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  ce = [r['train/ce'] for r in rows if 'train/ce' in r]
  assert len(ce) == 6 and ce[-1] < ce[0] - 0.5
  # Throughput leaves the evaluation and checkpoint pauses out without running ahead of time:
  # a flush inside a checkpoint once made the next row read ~1e12 tokens/s.
  rates = [r['train/tokens_per_s'] for r in rows if 'train/tokens_per_s' in r]
  assert len(rates) == 6 and all(0 < x < 1e7 for x in rates), rates
  assert [r['step'] for r in rows if 'val/ce' in r] == [75, 150]
  assert summary['steps'] == 150 and set(summary['exact_match']) == {'1', '2', '3'}
  assert json.load(open(os.path.join(workdir, 'summary.json')))['steps'] == 150
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  assert json.load(open(os.path.join(workdir, 'config.json')))['optim']['lr'] == c.optim.lr


@pytest.mark.slow
def test_resume_equals_uninterrupted(trained, tmp_path):
  c, workdir, _ = trained
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(workdir, resumed, ignore=shutil.ignore_patterns('150'))
  assert sorted(os.listdir(os.path.join(resumed, 'checkpoints'))) == ['75']
  summary = train_mode.train_and_evaluate(c, resumed)
  assert summary['steps'] == 150
  load = lambda d: checkpoint.restore(checkpoint.make_manager(d, 2), None, None)
  _, want, want_best, want_data, want_loop = load(workdir)
  _, got, got_best, got_data, got_loop = load(resumed)
  for a, b in zip(jax.tree.leaves((want, want_best)), jax.tree.leaves((got, got_best))):
    np.testing.assert_array_equal(a, b)
  assert got_data == want_data and got_loop == want_loop


@pytest.mark.slow
def test_teacher_forced_exact_equals_greedy(trained, data_dir):
  c, workdir, summary = trained
  s = setup_lib.setup(c, workdir)
  _, state_sh = state_lib.init_state(s, jax.random.key(0))
  _, p_eval = step_lib.compile_steps(s, state_sh)
  _, _, best, _, _ = checkpoint.restore(checkpoint.make_manager(workdir, 2), None, None)
  for n, greedy in summary['exact_match'].items():
    batches = seq.eval_batches(s.splits[f'test_{n}'], s.tokenizer, 32)
    got = validation.evaluate(p_eval, best, batches, s.mesh, seq.EVAL_KEYS)['exact']
    assert got == pytest.approx(greedy)
  assert any(v > 0 for v in summary['exact_match'].values())


@pytest.mark.slow
def test_eval_mode_reports_the_checkpoint(trained, tmp_path):
  c, workdir, summary = trained
  result = evaluate_mode.evaluate_checkpoint(c, workdir)
  assert result['step'] == 150 and result['exact_match'] == summary['exact_match']
  # Without --config the run's own config is read: the same figures.
  assert evaluate_mode.evaluate_checkpoint(None, workdir) == result
  # A setting the model was trained without is refused, never evaluated (RoPE -> no positions
  # restores the same parameters and would report made-up figures).
  other = c.copy_and_resolve_references()
  other.model.positions = 'none'
  with pytest.raises(errors.ConfigError, match=r"model.positions 'rope' \(run\) vs 'none'"):
    evaluate_mode.evaluate_checkpoint(other, workdir)
  # Evaluation-time keys may change: another evaluator over the same splits.
  other = c.copy_and_resolve_references()
  other.evals.exact_match.type = 'teacher_forced'
  forced = evaluate_mode.evaluate_checkpoint(other, workdir)['exact_match']
  assert {k: v['exact'] for k, v in forced.items()} == pytest.approx(
      {f'test_{k}': v for k, v in summary['exact_match'].items()})
  # A misspelt workdir is an error that writes nothing there.
  with pytest.raises(FileNotFoundError, match='holds no run'):
    evaluate_mode.evaluate_checkpoint(None, str(tmp_path / 'nope'))
  assert not (tmp_path / 'nope').exists()


def run_launch(*args):
  return subprocess.run([sys.executable, 'launch.py', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)


@pytest.mark.e2e
def test_typo_in_config_override_fails_with_the_key(tmp_path):
  workdir = tmp_path / 'run'
  out = run_launch('--config=configs/tiny.py', f'--workdir={workdir}', '--config.optim.lrr=1')
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert 'names no config key' in out.stderr and 'Did you mean "lr"' in out.stderr
  assert not workdir.exists()


@pytest.mark.e2e
def test_user_errors_are_a_message_and_exit_code_2(tmp_path):
  workdir = tmp_path / 'run'
  out = run_launch('--config=configs/tiny.py', f'--workdir={workdir}', '--config.optim.lr=-1')
  assert out.returncode == 2, out.stderr[-2000:]
  assert 'Traceback' not in out.stderr
  assert 'error: the config has 1 problem(s):\n  - config.optim.lr=-1.0 must be' in out.stderr
  assert not workdir.exists()  # Nothing written for a config that cannot run.
  out = run_launch('--mode=eval', f'--workdir={workdir}')  # No --config: the run's own.
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert f'error: {workdir} holds no run (no config.json)' in out.stderr
  assert not workdir.exists()
  records = tmp_path / 'feedback.jsonl'
  records.write_text('{"prompt": "1+2=", "response": "3", "label": "fine"}\n')
  out = run_launch('--mode=finetune', '--config=configs/feedback_finetune.py',
                   f'--workdir={workdir}', f'--config.data.feedback.train_path={records}',
                   '--config.data.eval_batch_size=64')  # 8 simulated devices.
  assert out.returncode == 2 and 'Traceback' not in out.stderr, out.stderr[-2000:]
  assert "line 1: unknown label 'fine'; config.data.feedback.labels has" in out.stderr
  assert not workdir.exists()


@pytest.mark.slow
def test_early_stopping_keeps_the_best_parameters(data_dir, tmp_path):
  # With a zero learning rate validation never improves after the first evaluation.
  c = tiny_config(data_dir, num_steps=100, eval_every=10, patience=1)
  c.optim.update(lr=0.0, schedule='constant')
  summary = train_mode.train_and_evaluate(c, str(tmp_path))
  assert summary['early_stopped'] and summary['steps'] == 20 and summary['best_step'] == 10
  step, *_ = checkpoint.restore(checkpoint.make_manager(str(tmp_path), 2), None, None)
  assert step == 20


@pytest.mark.slow
def test_trains_on_local_text_files(tmp_path):
  (tmp_path / 'corpus.txt').write_text('the quick brown fox jumps over the lazy dog. ' * 40)
  c = tiny_config(str(tmp_path / 'data'), num_steps=10)
  c.data.update(task='text', seq_len=24)
  c.data.text.paths = str(tmp_path / '*.txt')
  summary = train_mode.train_and_evaluate(c, str(tmp_path / 'run'))
  assert summary['steps'] == 10 and summary['exact_match'] == {}
  assert summary['best_val_ce'] < 5.5  # Below uniform over bytes (log 259 = 5.56).


@pytest.mark.slow
def test_sample_mode_continues_prompts_from_the_checkpoint(trained, tmp_path):
  c, workdir, summary = trained
  samples = sample_mode.sample_checkpoint(c, workdir, ['1+2=', '4+3='])
  assert [s['prompt'] for s in samples] == ['1+2=', '4+3=']
  assert all(s['tokens'] <= c.sample.max_new_tokens and s['mean_logprob'] <= 0 for s in samples)
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'samples.jsonl'))]
  assert rows[-1]['step'] == 150 and rows[-1]['completion'] == samples[-1]['completion']
  # Sample mode (greedy) and the training report agree on every held-out prompt.
  records = list(pipeline.read_all(setup_lib.setup(c, workdir).splits['test_1']))
  samples = sample_mode.sample_checkpoint(c, workdir, [r['prompt'].decode() for r in records])
  right = [s['ended'] and s['completion'] == r['answer'].decode()
           for s, r in zip(samples, records)]
  assert np.mean(right) == pytest.approx(summary['exact_match']['1'])
  with pytest.raises(ValueError, match='no prompts'):
    sample_mode.sample_checkpoint(c, workdir, [])
  # An unwritable samples file loses nothing: the samples were printed and are returned.
  os.rename(os.path.join(workdir, 'samples.jsonl'), os.path.join(workdir, 'kept.jsonl'))
  os.mkdir(os.path.join(workdir, 'samples.jsonl'))
  assert sample_mode.sample_checkpoint(c, workdir, ['1+2='])[0]['prompt'] == '1+2='
  os.rmdir(os.path.join(workdir, 'samples.jsonl'))
  with pytest.raises(FileNotFoundError, match='train first'):
    sample_mode.sample_checkpoint(c, str(tmp_path), ['1+2='])


@pytest.mark.slow
def test_sample_takes_overrides_of_the_run_config_without_config(trained):
  """--mode=sample --workdir=W --config.sample.temperature=0, with no --config (launch.py's path)."""
  c, workdir, _ = trained
  config = run_config.with_overrides(workdir, {'sample.temperature': '0', 'sample.seed': '3'})
  samples = sample_mode.sample_checkpoint(config, workdir, ['1+2=', '4+3='])
  assert samples == sample_mode.sample_checkpoint(c, workdir, ['1+2=', '4+3='])  # Greedy both.
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'samples.jsonl'))]
  assert rows[-3]['temperature'] == 0 and rows[-3]['seed'] == 3


@pytest.mark.slow
def test_an_init_from_that_does_not_fit_is_refused_before_anything_is_written(trained, tmp_path):
  c, workdir, _ = trained
  new = tiny_config(c.data.data_dir, num_steps=10)
  new.model.update(init_from=workdir, mlp_dim=2 * c.model.mlp_dim)
  with pytest.raises(errors.ConfigError, match=r'init_from: parameter .*mlp.* is \(\d+, \d+\) '
                     'there'):
    train_mode.train_and_evaluate(new, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_dry_run_counts_parameters_and_writes_nothing(tmp_path):
  c = tiny_config(str(tmp_path / 'data'))
  plan = dry_run.plan(c, str(tmp_path / 'run'), 'train')
  e, m, layers = c.model.d_model, c.model.mlp_dim, c.model.num_layers
  per_block = 4 * e * e + 2 * e * m + 2 * 2 * e  # q, k, v, out; up, down; two LayerNorms.
  assert plan['parameters'] == 259 * e + layers * per_block + 2 * e  # Tied embedding, final norm.
  assert plan['task'] == 'addition' and not plan['resumes']
  assert not os.listdir(tmp_path)  # No data, no workdir.


@pytest.mark.e2e
def test_resuming_on_other_data_restarts_early_stopping(data_dir, tmp_path):
  c = tiny_config(data_dir, num_steps=10)
  train_mode.train_and_evaluate(c, str(tmp_path))
  (tmp_path / 'corpus.txt').write_text('the quick brown fox jumps over the lazy dog. ' * 40)
  c = tiny_config(str(tmp_path / 'data'), num_steps=20, eval_every=5)
  c.data.update(task='text', seq_len=24)
  c.data.text.paths = str(tmp_path / 'corpus.txt')
  summary = train_mode.train_and_evaluate(c, str(tmp_path))
  # The addition run's best (step 10) is not the text run's: validation restarted after it.
  assert summary['steps'] == 20 and summary['best_step'] > 10


def test_progress_line_names_the_round_and_gives_the_job_eta(caplog, monkeypatch):
  class Writer:
    rows = []

    def write(self, step, values):
      self.rows.append((step, values))

  c = tiny_config('')
  s = types.SimpleNamespace(config=c, seq_len=10,
                            schedule=optim.make_schedule(c.optim, c.train.num_steps))
  progress = loop.Progress(Writer(), s, 0, label='self round 2/3 | ', steps_after=300)
  metrics = {'loss': 1.0, 'ce': 1.5, 'accuracy': 0.5, 'mean_f': 0.25, 'feedback_scale': 1.0,
             'nonfinite_streak': 0}
  monkeypatch.setattr(loop.time, 'time', lambda: 1000.0)
  progress.t_log = 998.0  # Two seconds for 5 steps: 2.5 steps/s.
  progress.pending = [{'step': i, 'metrics': metrics} for i in range(1, 6)]
  with caplog.at_level('INFO'):
    progress.flush(5)
  line = caplog.records[-1].getMessage()
  assert line.startswith('self round 2/3 | step     5/20 | loss 1.0000 ce 1.5000'), line
  # 15 steps of this run and 300 after it at about 2.5 steps/s.
  assert 'ETA 0m06s, job 2m06s' in line, line
  step, values = Writer.rows[-1]
  assert step == 5 and values['train/tokens_per_s'] == 2.5 * 16 * 10
