"""Two processes on this machine (CPU, gloo collectives over loopback) run the multi-host path:
jax.distributed, per-host data shares, orbax's coordinated checkpoint, process-0-only outputs."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from selffb import checkpoint
from selffb.assemble import setup as setup_lib
from selffb.train import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ['--config=configs/tiny.py', '--config.train.num_steps=20']
RUNNER = ("import jax; jax.config.update('jax_cpu_collectives_implementation', 'gloo'); "
          "import sys; sys.argv = ['launch.py'] + sys.argv[1:]; exec(open('launch.py').read())")


@pytest.mark.e2e
def test_two_processes_match_one(tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  data = f'--config.data.data_dir={tmp_path / "data"}'
  procs = [subprocess.Popen(
      [sys.executable, '-c', RUNNER, *ARGS, data, f'--workdir={tmp_path / "multi"}',
       '--multihost', f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
       f'--process_id={i}'], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  single = subprocess.run([sys.executable, 'launch.py', *ARGS, data,
                           f'--workdir={tmp_path / "single"}'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr[-3000:]
  # Restored onto this process's 8-device mesh: a checkpoint written by two hosts reshards.
  c = tiny.get_config()
  c.data.data_dir = str(tmp_path / 'data')
  state, _ = state_lib.init_state(setup_lib.setup(c, ''), jax.random.key(0))
  load = lambda d: checkpoint.restore(checkpoint.make_manager(str(tmp_path / d), 2), state,
                                      state.params)
  multi, one = load('multi'), load('single')
  assert multi[0] == one[0] == 20
  for a, b in zip(jax.tree.leaves(multi[1].params), jax.tree.leaves(one[1].params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  rows = [json.loads(l) for l in open(tmp_path / 'multi' / 'metrics.jsonl')]
  assert sorted({r['step'] for r in rows}) == [5, 10, 15, 20]  # Written once, by process 0.
  assert len(rows) == len([json.loads(l) for l in open(tmp_path / 'single' / 'metrics.jsonl')])
