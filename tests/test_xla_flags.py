import json
import os
import subprocess
import sys

from selffb import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADDED = ('--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=individual_dot '
         '--xla_cpu_experimental_ynn_fusion_type=reduce')


def test_flags_are_appended_on_x86_with_a_recent_jaxlib():
  assert xla_flags.with_cpu_flags('', 'x86_64', '0.10.2') == ADDED
  assert (xla_flags.with_cpu_flags('--xla_force_host_platform_device_count=8', 'AMD64', '0.11.0')
          == '--xla_force_host_platform_device_count=8 ' + ADDED)


def test_flags_are_left_out_elsewhere_and_when_the_user_chose():
  assert xla_flags.with_cpu_flags('', 'aarch64', '0.10.2') == ''
  assert xla_flags.with_cpu_flags('', 'arm64', '0.10.2') == ''
  assert xla_flags.with_cpu_flags('--a=1', 'x86_64', '0.9.9') == '--a=1'
  assert xla_flags.with_cpu_flags('--xla_cpu_use_onednn=false', 'x86_64', '0.10.2') == (
      '--xla_cpu_use_onednn=false')
  assert xla_flags.with_cpu_flags('--xla_cpu_experimental_ynn_fusion_type=', 'x86_64',
                                  '0.10.2') == '--xla_cpu_experimental_ynn_fusion_type='


def test_apply_opts_out_and_is_idempotent(monkeypatch):
  monkeypatch.setattr(xla_flags.platform, 'machine', lambda: 'x86_64')
  monkeypatch.setattr(xla_flags.importlib.metadata, 'version', lambda _: '0.10.2')
  env = {'XLA_FLAGS': '--x=1', xla_flags.OPT_OUT: '0'}
  assert xla_flags.apply(env) == '' and env['XLA_FLAGS'] == '--x=1'
  env = {'XLA_FLAGS': '--x=1'}
  assert xla_flags.apply(env) == ADDED and env['XLA_FLAGS'] == '--x=1 ' + ADDED
  assert xla_flags.apply(env) == '' and env['XLA_FLAGS'] == '--x=1 ' + ADDED
  env = {}
  assert xla_flags.apply(env) == ADDED and env['XLA_FLAGS'] == ADDED


# Three steps of the tiny config, as a user's script runs them: apply() before anything computes.
STEPS = """
import json, sys
from selffb import xla_flags
added = xla_flags.apply()
import jax, numpy as np
from configs import tiny
from selffb import data, sharding, train
c = tiny.get_config()
c.data.data_dir = sys.argv[1]
c.mesh.data = 1
s = train.setup(c, '', jax.devices()[:1])
it = data.make_iterator(data.train_dataset(s.splits['train'], s.tokenizer, s.seq_len, 16, 0))
batch = sharding.put_batch(s.mesh, {k: v for k, v in next(it).items() if k in train.TRAIN_KEYS})
state, state_sh = train.init_state(s, jax.random.key(0))
p_train, _ = train.compile_steps(s, state_sh)
hlo = p_train.lower(state, batch, jax.random.key(1)).compile().as_text()
losses = []
for _ in range(3):
  state, m = p_train(state, batch, jax.random.key(1))
  losses.append(float(m['loss']))
print(json.dumps({'added': added, 'losses': losses, 'onednn_dots': hlo.count('__onednn_fusion'),
                  'params': [float(np.abs(p).sum()) for p in jax.tree.leaves(state.params)]}))
"""


def test_tuned_flags_train_like_xla_defaults(tmp_path):
  """The same three steps with and without selffb's flags (each a fresh process: XLA reads its
  flags once) give the same losses and parameters, and the tuned run really used oneDNN."""
  runs = {}
  for opt in ('1', '0'):
    env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
               **{xla_flags.OPT_OUT: opt})
    runs[opt] = subprocess.Popen([sys.executable, '-c', STEPS, str(tmp_path / opt)], cwd=ROOT,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
  out = {}
  for opt, proc in runs.items():
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    out[opt] = json.loads(stdout.strip().splitlines()[-1])
  tuned, plain = out['1'], out['0']
  assert tuned['added'] == ADDED and plain['added'] == ''
  assert tuned['onednn_dots'] > 0 and plain['onednn_dots'] == 0
  assert max(abs(a - b) / abs(b) for a, b in zip(tuned['losses'], plain['losses'])) < 1e-5
  assert max(abs(a - b) / b for a, b in zip(tuned['params'], plain['params'])) < 1e-5
