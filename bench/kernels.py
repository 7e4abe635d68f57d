"""Op by op at the reference shape: selffb's pieces compiled as its train step compiles them,
beside the same ops in eager PyTorch, to show which kernels a whole-step ratio comes from.

    python bench/kernels.py [--torch-python /path/to/venv/bin/python] [--cpus N] [--rounds 3]
        [--reps 30] [--out bench/results/kernels.json]

The ops (batch 16 x seq 256 rows, d_model 256, MLP 1024, 4 heads of 64): the projections'
forward, weight-gradient and input-gradient products, GELU, LayerNorm, a residual add, causal
attention, and one whole transformer block, forward alone and forward+backward (`_fb`).
selffb's side runs its own functions (`attention.causal_attention`, `decoder.Block`, Flax's
LayerNorm and tanh GELU as `model.Mlp` uses them) jitted with the step's compiler options
(selffb/cpu/xla_flags.py) under its malloc settings (selffb/cpu/host_memory.py). The PyTorch side
(`kernels_torch.py`, run by `--torch-python`, an interpreter with torch; never a selffb
dependency) runs nanoGPT's choices: `F.linear`, exact GELU, `F.layer_norm`,
`scaled_dot_product_attention(is_causal=True)`, and nanoGPT's `Block` when its model.py is at
$PEER_DIR/nanogpt_model.py (default ~/.cache/selffb-peers). `--cpus N` pins both processes to
the first N CPUs this process may use (both libraries then size their thread pools to them).
The two sides alternate for `--rounds`; an op's speed is the median over the rounds of the
torch time over selffb's (above 1: selffb is faster).
"""
import argparse
import collections
import json
import os
import statistics
import subprocess

# Before JAX starts its threads, which size their pool from the CPUs this process may use.
if __name__ == '__main__':
  _CPUS = argparse.ArgumentParser(add_help=False)
  _CPUS.add_argument('--cpus', type=int, default=0)
  _n = _CPUS.parse_known_args()[0].cpus
  if _n:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:_n])

import common  # pylint: disable=g-bad-import-order,wrong-import-position
import flax.linen as nn  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from selffb import sharding  # pylint: disable=wrong-import-position
from selffb.cpu import host_memory  # pylint: disable=wrong-import-position
from selffb.cpu import xla_flags  # pylint: disable=wrong-import-position
from selffb.models import attention as attention_lib  # pylint: disable=wrong-import-position
from selffb.models import decoder  # pylint: disable=wrong-import-position
from selffb.models import layers  # pylint: disable=wrong-import-position

B, T, E, H, M = 16, 256, 256, 4, 1024


def jax_ops():
  """{name: (function, args)} for selffb's side, each name matching kernels_torch.py's."""
  c = common.reference_config()
  cfg = common.reference_model_config(c)
  assert (cfg.d_model, cfg.num_heads, cfg.mlp_dim) == (E, H, M), cfg
  keys = iter(jax.random.split(jax.random.key(0), 16))
  normal = lambda *shape: jax.random.normal(next(keys), shape, jnp.float32)
  x, h, dh = normal(B * T, E), normal(B * T, M), normal(B * T, M)
  w_qkv, w_up, b_up, w_down = normal(E, 3 * E), normal(E, M), normal(M), normal(M, E)
  q, k, v = (normal(B, H, T, E // H) for _ in range(3))
  valid = jnp.ones((B, T), bool)
  norm = layers.norm(cfg, 'norm')
  norm_params = norm.init(next(keys), x)
  block = decoder.Block(cfg)
  xs, pos = normal(B, T, E), jnp.broadcast_to(jnp.arange(T), (B, T))
  block_params = block.init(next(keys), xs, pos, pos, None, None)
  attention = lambda q, k, v: attention_lib.causal_attention(q, k, v, valid, None,
                                                            cfg.attention_block)
  block_fwd = lambda p, x: block.apply(p, x, pos, pos, None, None)[0]

  def fwd_bwd(fn, *args):  # Forward and the gradients of every argument for a fixed cotangent.
    out = jax.eval_shape(fn, *args)
    g = jax.random.normal(jax.random.key(1), out.shape, out.dtype)
    return (lambda *a: jax.vjp(fn, *a)[1](g)), args

  return {
      'qkv': (lambda x, w: x @ w, (x, w_qkv)),
      'up_gelu': (lambda x, w, b: nn.gelu(x @ w + b), (x, w_up, b_up)),
      'down': (lambda h, w: h @ w, (h, w_down)),
      'wgrad_up': (lambda x, dh: jnp.einsum('re,rm->em', x, dh), (x, dh)),
      'dgrad_up': (lambda dh, w: jnp.einsum('rm,em->re', dh, w), (dh, w_up)),
      'gelu': (nn.gelu, (h,)),
      'gelu_fb': fwd_bwd(nn.gelu, h),
      'layernorm': (lambda x: norm.apply(norm_params, x), (x,)),
      'layernorm_fb': fwd_bwd(lambda x: norm.apply(norm_params, x), x),
      'residual_add': (jnp.add, (x, x)),
      'attention': (attention, (q, k, v)),
      'attention_fb': fwd_bwd(attention, q, k, v),
      'block': (block_fwd, (block_params, xs)),
      'block_fb': fwd_bwd(block_fwd, block_params, xs),
  }


def compile_jax():
  """({name: a thunk that runs the compiled op}, the compiler options)."""
  c = common.reference_config()
  options = xla_flags.for_mesh(c, sharding.make_mesh(c.mesh, jax.devices()[:1]))
  runs = {}
  for name, (fn, args) in jax_ops().items():
    compiled = jax.jit(fn).lower(*args).compile(options)
    runs[name] = lambda compiled=compiled, args=args: jax.block_until_ready(compiled(*args))
  return runs, options


def time_torch(python, reps, cpus):
  """{name: median seconds} of kernels_torch.py run by `python`, under selffb's malloc settings."""
  peers = os.environ.get('PEER_DIR', os.path.expanduser('~/.cache/selffb-peers'))
  cmd = [python, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'kernels_torch.py'),
         '--reps', str(reps), '--cpus', str(cpus),
         '--nanogpt-model', os.path.join(peers, 'nanogpt_model.py')]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                       env=dict(os.environ, **host_memory.ENV)).stdout
  return json.loads([l for l in out.splitlines() if l.startswith('RESULT ')][-1][len('RESULT '):])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--cpus', type=int, default=0, help='pin both sides to the first N CPUs')
  ap.add_argument('--reps', type=int, default=30)
  ap.add_argument('--rounds', type=int, default=3)
  ap.add_argument('--torch-python', default='',
                  help='python with torch: also time the same ops in eager PyTorch')
  ap.add_argument('--out', default='bench/results/kernels.json')
  args = ap.parse_args()
  host_memory.reuse_freed_memory()
  cpus = len(os.sched_getaffinity(0))
  runs, options = compile_jax()
  # Rounds alternate the two sides, so that a machine whose speed drifts moves both alike.
  jax_s, torch_s = collections.defaultdict(list), collections.defaultdict(list)
  for r in range(args.rounds):
    for name, run in runs.items():
      jax_s[name].append(common.timed(run, args.reps, warmup=3)[0])
    for name, t in (time_torch(args.torch_python, args.reps, cpus).items()
                    if args.torch_python else ()):
      torch_s[name].append(t)
    print(f'round {r + 1}/{args.rounds} done', flush=True)
  print(f'{cpus} CPU(s), {args.rounds} rounds of {args.reps} calls; selffb compiler options: '
        f'{options or "none"}')
  print(f'{"op":<16}{"selffb ms":>11}{"torch ms":>10}{"selffb speed":>14}{"per round":>24}')
  speed = {}
  for name, js in jax_s.items():
    ts = torch_s.get(name)
    rounds = [t / j for j, t in zip(js, ts)] if ts else []
    speed[name] = statistics.median(rounds) if rounds else None
    print(f'{name:<16}{statistics.median(js) * 1e3:>11.3f}' + (
        f'{statistics.median(ts) * 1e3:>10.3f}{speed[name]:>13.2f}x    '
        + ' '.join(f'{x:.2f}' for x in rounds) if ts else f'{"n/a":>10}'))
  common.write_report(args.out, cpus=cpus, rounds=args.rounds, reps=args.reps,
                      selffb_compiler_options=options, selffb_s=dict(jax_s),
                      torch_s=dict(torch_s), selffb_speed_vs_torch=speed)

if __name__ == '__main__':
  main()
