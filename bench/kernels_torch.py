"""The PyTorch side of kernels.py: the same ops in eager PyTorch, as nanoGPT computes them.

    python bench/kernels_torch.py [--reps 30] [--cpus N] [--nanogpt-model PATH]

Prints one `RESULT {json}` line, {op: median seconds}. Needs torch only (never a selffb
dependency); the `block` ops need nanoGPT's model.py at PATH and are left out without it.
"""
import argparse
import importlib.util
import json
import os

import torch
import torch.nn.functional as F

from timing import timed  # bench/timing.py, JAX-free like this script

B, T, E, H, M = 16, 256, 256, 4, 1024


def fwd_bwd(fn, *args):
  """Forward, then the gradients of every argument for a fixed cotangent."""
  args = [a.detach().requires_grad_() for a in args]
  g = torch.randn_like(fn(*args))

  def run():
    for a in args:
      a.grad = None
    fn(*args).backward(g)
  return run


def ops(nanogpt_model):
  torch.manual_seed(0)
  x, h, dh = torch.randn(B * T, E), torch.randn(B * T, M), torch.randn(B * T, M)
  w_qkv, w_up, b_up, w_down = (torch.randn(3 * E, E), torch.randn(M, E), torch.randn(M),
                               torch.randn(E, M))
  q, k, v = (torch.randn(B, H, T, E // H) for _ in range(3))
  scale, shift = torch.ones(E), torch.zeros(E)
  norm = lambda x: F.layer_norm(x, (E,), scale, shift, 1e-5)
  attention = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
  nograd = lambda fn, *a: lambda: fn(*a)
  table = {
      'qkv': nograd(F.linear, x, w_qkv),
      'up_gelu': nograd(lambda: F.gelu(F.linear(x, w_up, b_up))),
      'down': nograd(F.linear, h, w_down),
      'wgrad_up': nograd(lambda: x.t() @ dh),
      'dgrad_up': nograd(lambda: dh @ w_up),
      'gelu': nograd(F.gelu, h),
      'gelu_fb': fwd_bwd(F.gelu, h),
      'layernorm': nograd(norm, x),
      'layernorm_fb': fwd_bwd(norm, x),
      'residual_add': nograd(torch.add, x, x),
      'attention': nograd(attention, q, k, v),
      'attention_fb': fwd_bwd(attention, q, k, v),
  }
  if os.path.exists(nanogpt_model):
    spec = importlib.util.spec_from_file_location('nanogpt_model', nanogpt_model)
    ng = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ng)
    block = ng.Block(ng.GPTConfig(block_size=T, vocab_size=256, n_layer=4, n_head=H, n_embd=E,
                                  dropout=0.0, bias=True))
    xs = torch.randn(B, T, E)
    table['block'] = nograd(block, xs)
    g = torch.randn(B, T, E)
    xs_grad = xs.clone().requires_grad_()

    def block_fb():
      block.zero_grad(set_to_none=True)
      xs_grad.grad = None
      block(xs_grad).backward(g)
    table['block_fb'] = block_fb
  return table


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--reps', type=int, default=30)
  ap.add_argument('--cpus', type=int, default=0)
  ap.add_argument('--nanogpt-model', default='')
  args = ap.parse_args()
  if args.cpus:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cpus])
    torch.set_num_threads(args.cpus)
  out = {}
  for name, fn in ops(args.nanogpt_model).items():
    if name.endswith('_fb'):
      out[name] = timed(fn, args.reps, warmup=3)[0]
    else:
      with torch.no_grad():
        out[name] = timed(fn, args.reps, warmup=3)[0]
  print('RESULT ' + json.dumps(out))


if __name__ == '__main__':
  main()
