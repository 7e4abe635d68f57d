"""What the benchmark scripts share: the reference model shape, the shared yardsticks, output."""
import json
import os
import platform
import subprocess
import sys

import jax
from timing import timed  # pylint: disable=unused-import  (common.timed, for the scripts)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # pylint: disable=g-import-not-at-top

SHARED_BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared',
                            'bench')


VOCAB = 256  # The yardstick's vocabulary (selffb's byte tokenizer has 259).


def reference_model_config(c):
  """The frozen model config of `c` with the yardstick's vocabulary."""
  from selffb import models  # pylint: disable=g-import-not-at-top
  return models.get(c.model.kind).Config.from_config(c.model, VOCAB)


def reference_config():
  """4 layers, 4 heads, d_model 256, vocabulary 256, learned positions, LayerNorm, GELU, biases,
  tied, float32: the yardstick's GPT-2 architecture; attention in query blocks of 128."""
  c = default.get_config()
  c.model.update(num_layers=4, num_heads=4, d_model=256, mlp_dim=1024,
                 positions='learned', max_len=256, norm='layernorm', mlp='gelu',
                 tie_embeddings=True, use_bias=True, attention_block=128)
  c.mesh.data = 1
  c.optim.feedback_scale = 'relative'  # The full chain, as measured before the default dropped it.
  return c


def yardstick(script, *args, python=sys.executable, env=None):
  """Runs a ../shared/bench script with `python`, adding `env` (a dict) to the environment; its
  RESULT records by name, or None if it is absent."""
  path = os.path.join(SHARED_BENCH, script)
  if not os.path.exists(path):
    print(f'yardstick {path} not found: no ratios against it')
    return None
  out = subprocess.run([python, path, *map(str, args)], capture_output=True, text=True,
                       cwd=SHARED_BENCH, check=True, env=dict(os.environ, **(env or {}))).stdout
  records = [json.loads(l[len('RESULT '):]) for l in out.splitlines() if l.startswith('RESULT ')]
  return {r['name']: r for r in records}


def write_report(path, **report):
  report.update(device=jax.devices()[0].device_kind, backend=jax.default_backend(),
                jax=jax.__version__, python=platform.python_version())
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    json.dump(report, f, indent=2)
  print(f'wrote {path}')


def table(rows, baseline):
  """Prints name, tokens/s and the ratio to `baseline` (a row) for each row."""
  print(f'{"run":<30}{"tokens/s":>12}{"median s":>10}{"compile s":>11}{"ratio":>9}')
  for r in rows:
    ratio = f'{r["tokens_per_s"] / baseline["tokens_per_s"]:.2f}x' if baseline else 'n/a'
    print(f'{r["name"]:<30}{r["tokens_per_s"]:>12,.0f}{r["median_s"]:>10.3f}'
          f'{r.get("compile_s", float("nan")):>11.2f}{ratio:>9}')
