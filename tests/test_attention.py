"""attention='dot_product': which implementation of jax.nn.dot_product_attention each device,
dtype and mask gets, that CPU runs XLA's with the dense mask, and that the cuDNN path's
arguments (causal flag, key lengths, the per-batch fallback for other padding) give the einsum
path's outputs and gradients when XLA computes them."""
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from selffb.models import attention
from selffb.models import decoder
from selffb.models import encdec
from selffb.models import encoder

BF16 = jnp.bfloat16


@pytest.mark.parametrize('platform, dtype, head_dim, mask, want, why', [
    ('cuda', BF16, 64, 'causal', 'cudnn', 'causal mask'),
    ('cuda', jnp.float16, 128, 'bidirectional', 'cudnn', 'bidirectional mask'),
    ('cpu', BF16, 64, 'causal', 'xla', "platform 'cpu'"),
    ('tpu', BF16, 64, 'causal', 'xla', "platform 'tpu'"),
    ('gpu', BF16, 64, 'causal', 'xla', "platform 'gpu'"),  # ROCm: no cuDNN.
    ('cuda', jnp.float32, 64, 'causal', 'xla', 'dtype float32'),
    ('cuda', BF16, 12, 'causal', 'xla', 'head dim 12'),
    ('cuda', BF16, 256, 'causal', 'xla', 'head dim 256'),
    ('cuda', BF16, 64, 'segments', 'xla', 'segment ids'),
    ('cuda', BF16, 64, 'cache', 'xla', 'KV cache'),
])
def test_the_implementation_follows_device_dtype_and_mask(platform, dtype, head_dim, mask, want,
                                                          why):
  implementation, reason = attention.choose_implementation(platform, dtype, head_dim, mask)
  assert implementation == want and why in reason


def qkv_valid(prefix_padded, t=10, seed=0):
  q, k, v = (jax.random.normal(key, (2, t, 3, 8))
             for key in jax.random.split(jax.random.key(seed), 3))
  valid = np.ones((2, t), bool)
  valid[1, 7:] = False  # Right padding, as training batches have.
  if not prefix_padded:
    valid[0, :2] = False  # A left-padded prompt: no prefix of lengths describes it.
  return q, k, v, jnp.asarray(valid)


@pytest.mark.slow
@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('prefix_padded', [True, False])
def test_the_lengths_path_equals_the_dense_mask(causal, prefix_padded):
  """cuDNN's arguments (is_causal, key lengths; the dense mask for other padding), computed by
  XLA, give the einsum attention's outputs at every query, padding queries included, and its
  gradients, jitted."""
  q, k, v, valid = qkv_valid(prefix_padded)
  t = valid.shape[1]
  mask = (attention._mask(valid, jnp.arange(t)) if causal else valid[:, None, None, :])
  want_fn = lambda q, k, v: jnp.swapaxes(attention._attend(
      *(jnp.swapaxes(x, 1, 2) for x in (q, k, v)), mask)[0], 1, 2)
  got_fn = jax.jit(lambda q, k, v: attention.by_lengths(q, k, v, valid, mask, causal, None))
  np.testing.assert_allclose(got_fn(q, k, v), want_fn(q, k, v), atol=1e-5, rtol=1e-5)
  loss = lambda f: lambda *qkv: jnp.sum(jnp.sin(f(*qkv)))
  for got, want in zip(jax.grad(loss(got_fn), (0, 1, 2))(q, k, v),
                       jax.grad(loss(want_fn), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def spy(monkeypatch):
  """The implementation argument of every jax.nn.dot_product_attention call."""
  calls, real = [], jax.nn.dot_product_attention

  def recording(*args, **kw):
    calls.append(kw.get('implementation'))
    return real(*args, **kw)
  monkeypatch.setattr(jax.nn, 'dot_product_attention', recording)
  return calls


def build(kind):
  """(module, cfg, inputs) of a tiny model of `kind` with padding in its rows."""
  c = tiny.get_config().model
  c.update(kind=kind, use_bias=True)
  pos = jnp.asarray([list(range(8)), list(range(6)) + [-1, -1]])
  tokens = jnp.ones((2, 8), jnp.int32)
  if kind == 'encoder':
    c.update(head='tag', num_labels=3, positions='learned')
    cfg = encoder.Config.from_config(c, 40)
    return encoder.build(cfg), cfg, (tokens, pos)
  if kind == 'encdec':
    cfg = encdec.Config.from_config(c, 40)
    return encdec.build(cfg), cfg, (tokens, pos, None, tokens, pos)
  cfg = decoder.Config.from_config(c, 40)
  return decoder.Decoder(cfg), cfg, (tokens, pos)


@pytest.mark.slow
@pytest.mark.parametrize('kind, calls_per_layer', [('decoder', 1), ('encoder', 1),
                                                  ('encdec', 3)])
def test_dot_product_runs_xla_on_cpu_in_every_module_and_equals_einsum(kind, calls_per_layer,
                                                                       monkeypatch, caplog):
  """Every attention module (causal, bidirectional, cross) calls jax.nn's attention with
  implementation='xla' here, says why once, and gives the einsum path's outputs."""
  module, cfg, inputs = build(kind)
  params = nn.unbox(module.init(jax.random.key(0), *inputs)['params'])
  want = module.apply({'params': params}, *inputs)[0]['logits']
  calls = spy(monkeypatch)
  attention._log_choice.cache_clear()
  with caplog.at_level(logging.INFO):
    other = module.clone(cfg=cfg.replace(attention='dot_product'))
    got = other.apply({'params': params}, *inputs)[0]['logits']
  assert calls == ['xla'] * calls_per_layer * cfg.num_layers
  said = [r.getMessage() for r in caplog.records if 'dot_product_attention' in r.getMessage()]
  assert said == ["attention='dot_product': jax.nn.dot_product_attention(implementation='xla'): "
                  "platform 'cpu' is not an NVIDIA GPU"]
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['decoder', 'encoder', 'encdec'])
def test_the_cudnn_choice_wires_lengths_into_every_module(kind, monkeypatch):
  """With the choice forced to the lengths path (computed by XLA, as no GPU is here), each
  module's outputs and gradients equal the einsum path's."""
  monkeypatch.setattr(attention, 'choose_implementation', lambda *a: (None, 'test'))
  module, cfg, inputs = build(kind)
  params = nn.unbox(module.init(jax.random.key(0), *inputs)['params'])
  other = module.clone(cfg=cfg.replace(attention='dot_product'))
  loss = lambda m: lambda p: jnp.sum(m.apply({'params': p}, *inputs)[0]['logits'] ** 2)
  np.testing.assert_allclose(loss(other)(params), loss(module)(params), rtol=1e-5)
  for got, want in zip(jax.tree.leaves(jax.grad(loss(other))(params)),
                       jax.tree.leaves(jax.grad(loss(module))(params))):
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-4)
