import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from configs import tiny
from selffb import sampling
from selffb.data import tokenizers
from selffb.models import attention
from selffb.models import decoder

VOCAB = tokenizers.ByteTokenizer.vocab_size


def run(module, variables, *args, **kw):
  """(logits, cache) of a model call."""
  outputs, cache = module.apply(variables, *args, **kw)
  return outputs['logits'], cache


def make_cfg(**overrides):
  c = tiny.get_config().model
  c.update(overrides)
  return decoder.Config.from_config(c, VOCAB)


def init(cfg, length=12, seed=0):
  tokens = jax.random.randint(jax.random.key(seed), (2, length), 3, cfg.vocab_size)
  params = nn.unbox(decoder.Decoder(cfg).init(jax.random.key(1), tokens)['params'])
  return params, tokens


SLOW = pytest.mark.slow
VARIANTS = [  # The first two run in the quick loop.
    dict(),
    dict(positions='learned', norm='rmsnorm', mlp='swiglu', tie_embeddings=False),
    pytest.param(dict(positions='none', remat='full'), marks=SLOW),
    pytest.param(dict(attention='dot_product', remat='dots_no_batch'), marks=SLOW),
    pytest.param(dict(attention_block=5), marks=SLOW),
    pytest.param(dict(dtype='bfloat16', param_dtype='bfloat16'), marks=SLOW),
]


@pytest.mark.parametrize('overrides', VARIANTS)
def test_shapes_and_finite(overrides):
  cfg = make_cfg(**overrides)
  params, tokens = init(cfg)
  outputs, cache = decoder.Decoder(cfg).apply({'params': params}, tokens)
  logits = outputs['logits']
  assert logits.shape == (2, 12, cfg.vocab_size) and logits.dtype == jnp.float32
  assert outputs['hidden'].shape == (2, 12, cfg.d_model)  # What a head on top reads.
  assert cache is None
  assert np.isfinite(np.asarray(logits)).all()
  if overrides.get('param_dtype') == 'bfloat16':
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))
  if not overrides.get('tie_embeddings', True):
    assert 'unembed' in params


def test_dropout_only_in_training_mode():
  cfg = make_cfg(dropout=0.5)
  params, tokens = init(cfg)
  apply = lambda c, seed: run(decoder.Decoder(c), 
      {'params': params}, tokens, rngs={'dropout': jax.random.key(seed)})[0]
  np.testing.assert_array_equal(apply(cfg, 0), apply(cfg, 1))
  train = cfg.replace(deterministic=False)
  assert not np.allclose(apply(train, 0), apply(train, 1))


@pytest.mark.parametrize('positions, pos_ids', [
    ('rope', None), pytest.param('learned', None, marks=SLOW),
    pytest.param('none', None, marks=SLOW),
    ('rope', [0, 1, 2, 0, 1, 2, 3, 1])])  # Ids that restart (per operand): still causal.
def test_causality_gradient(positions, pos_ids):
  """d logits[t] / d input embedding[s] is zero for s > t and nonzero for s <= t."""
  cfg = make_cfg(positions=positions)
  params, tokens = init(cfg, length=8)
  pos = None if pos_ids is None else jnp.broadcast_to(jnp.asarray(pos_ids), (2, 8))
  t = 4

  def out_at_t(delta_BxTxE):
    def add_delta(next_fn, args, kwargs, context):
      out = next_fn(*args, **kwargs)
      if context.module.name == 'embed' and context.method_name == '__call__':
        out = out + delta_BxTxE
      return out
    with nn.intercept_methods(add_delta):
      logits, _ = run(decoder.Decoder(cfg), {'params': params}, tokens, pos)
    return logits[:, t].sum()

  grad = jax.grad(out_at_t)(jnp.zeros((2, 8, cfg.d_model)))
  per_position = np.abs(np.asarray(grad)).sum(axis=(0, 2))
  assert (per_position[t + 1:] == 0).all()
  assert (per_position[:t + 1] > 0).all()


@pytest.mark.slow
def test_attention_implementations_and_remat_agree():
  """jax.nn's attention (differentiated by JAX) and remat give the einsum path's logits and
  gradients, whose attention backward is written by hand."""
  cfg = make_cfg()
  params, tokens = init(cfg)
  want = run(decoder.Decoder(cfg), {'params': params}, tokens)[0]
  for other in (cfg.replace(attention='dot_product'), cfg.replace(remat='dots')):
    got = run(decoder.Decoder(other), {'params': params}, tokens)[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  loss = lambda c, p: jnp.sum(run(decoder.Decoder(c), {'params': p}, tokens)[0] ** 2)
  want_g = jax.grad(lambda p: loss(cfg, p))(params)
  for other in (cfg.replace(attention='dot_product'), cfg.replace(remat='full')):
    got_g = jax.grad(lambda p, c=other: loss(c, p))(params)
    for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):  # Other op orders.
      np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize('overrides', [
    dict(attention_block=5),
    pytest.param(dict(attention_block=4, scan_layers=True, remat='full'), marks=SLOW),
    pytest.param(dict(dtype='bfloat16'), marks=SLOW)])
def test_model_gradients_equal_autodiff_attention(overrides, monkeypatch):
  """The model's gradients with the hand-written attention backward equal those with JAX
  differentiating the same attention, with left padding, in blocks, with scanned and
  rematerialised layers; in bfloat16 they are no further from float32's than JAX's are."""
  cfg = make_cfg(**overrides)
  params, tokens = init(cfg)
  pos = jnp.stack([jnp.arange(12), jnp.concatenate([jnp.full((3,), -1), jnp.arange(9)])])

  def grads(c):  # A new function each call, so each is traced anew.
    return jax.jit(jax.grad(lambda p: jnp.sum(
        run(decoder.Decoder(c), {'params': p}, tokens, pos)[0] ** 2)))(params)

  got = grads(cfg)
  monkeypatch.setattr(attention, 'causal_attention',
                      lambda *args: attention._causal_attention_fwd(*args)[0])
  want = grads(cfg)
  if cfg.dtype == jnp.float32:
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  else:  # bfloat16 rounds differently on each path: compare both with float32's gradients.
    exact = grads(cfg.replace(dtype=jnp.float32))
    flat = lambda g: np.asarray(ravel_pytree(g)[0], np.float32)
    error = lambda g: np.linalg.norm(flat(g) - flat(exact)) / np.linalg.norm(flat(exact))
    assert 0 < error(got) <= 1.5 * error(want) < 0.1, (error(got), error(want))


@pytest.mark.parametrize('block, dtype, packed', [
    pytest.param(0, jnp.float32, False, marks=SLOW), pytest.param(4, jnp.float32, False,
                                                                  marks=SLOW),
    (5, jnp.float32, False), pytest.param(5, jnp.bfloat16, False, marks=SLOW),
    (5, jnp.float32, True)])
def test_causal_attention_backward_equals_autodiff(block, dtype, packed):
  """The hand-written backward of causal_attention gives JAX's gradients of the same forward,
  padding queries (a row with no valid key), a short last block and packed rows' segments
  included."""
  b, h, t, d = 2, 3, 12, 8
  q, k, v, dout = (jax.random.normal(key, (b, h, t, d), dtype)
                   for key in jax.random.split(jax.random.key(0), 4))
  valid = jnp.ones((b, t), bool).at[1, :3].set(False)
  seg = None
  if packed:  # Padding (segment 0) is invalid, as a packed row's positions -1 make it.
    seg = jnp.asarray([[1] * 4 + [2] * 6 + [0] * 2, [0] * 3 + [1] * 7 + [2] * 2])
    valid = seg > 0
  out, vjp = jax.vjp(lambda *qkv: attention.causal_attention(*qkv, valid, seg, block), q, k, v)
  want_out, want_vjp = jax.vjp(
      lambda *qkv: attention._causal_attention_fwd(*qkv, valid, seg, block)[0], q, k, v)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want_out, np.float32),
                             rtol=tol, atol=tol)
  for name, got, want in zip('qkv', vjp(dout), want_vjp(dout)):
    assert got.dtype == dtype, name
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               rtol=tol, atol=tol, err_msg=f'd{name}')


@pytest.mark.slow
@pytest.mark.parametrize('block', [4, 5, 7])
def test_blocked_attention_equals_one_block(block):
  """Query blocks that skip the keys above the diagonal give the same logits and gradients as
  one block at every real position, with left padding (negative position ids) masked the same
  way; 5 and 7 leave a short last block. (A padding query sees no key; its output is never used.)"""
  cfg = make_cfg(attention_block=0)
  params, tokens = init(cfg)
  pos = jnp.stack([jnp.arange(12), jnp.concatenate([jnp.full((3,), -1), jnp.arange(9)])])
  blocked = cfg.replace(attention_block=block)

  def loss(c, p):
    logits = run(decoder.Decoder(c), {'params': p}, tokens, pos)[0]
    return jnp.sum(jnp.where(pos[..., None] >= 0, logits, 0.0) ** 2), logits

  (want_l, want), want_g = jax.value_and_grad(lambda p: loss(cfg, p), has_aux=True)(params)
  (got_l, got), got_g = jax.value_and_grad(lambda p: loss(blocked, p), has_aux=True)(params)
  real = np.asarray(pos) >= 0
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(got_l, want_l, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)  # Gradients reach ~60.


def test_negative_attention_block_is_rejected():
  c = tiny.get_config().model
  c.attention_block = -1
  with pytest.raises(ValueError, match='attention_block'):
    decoder.Config.from_config(c, VOCAB)


@pytest.mark.slow
def test_scanned_layers_equal_unrolled_layers():
  cfg = make_cfg()
  params, tokens = init(cfg)
  stacked = {k: v for k, v in params.items() if not k.startswith('block_')}
  stacked['blocks'] = jax.tree.map(lambda *x: jnp.stack(x),
                                   *[params[f'block_{i}'] for i in range(cfg.num_layers)])
  scanned = cfg.replace(scan_layers=True)
  assert jax.tree.structure(nn.unbox(decoder.Decoder(scanned).init(
      jax.random.key(1), tokens)['params'])) == jax.tree.structure(stacked)
  want = run(decoder.Decoder(cfg), {'params': params}, tokens)[0]
  got = run(decoder.Decoder(scanned), {'params': stacked}, tokens)[0]
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('overrides', VARIANTS + [
    pytest.param(dict(scan_layers=True, remat='full'), marks=SLOW)])
def test_cached_decoding_equals_full_forward(overrides):
  """Prefill 5 tokens, then feed one token at a time: logits match the full pass."""
  cfg = make_cfg(**overrides)
  params, tokens = init(cfg, length=12)
  model = decoder.Decoder(cfg)
  full, _ = run(model, {'params': params}, tokens)
  cache = decoder.init_cache(cfg, batch=2, length=16)
  pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
  step_logits, cache = run(model, {'params': params}, tokens[:, :5], pos[:, :5], cache)
  outs = [step_logits]
  for i in range(5, 12):
    step_logits, cache = run(model, {'params': params}, tokens[:, i:i + 1], pos[:, i:i + 1],
                                     cache)
    outs.append(step_logits)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=2e-5, rtol=1e-5)
  assert int(cache['index']) == 12


@pytest.mark.slow
def test_left_padded_prompt_matches_unpadded():
  cfg = make_cfg()
  params, tokens = init(cfg, length=6)
  model = decoder.Decoder(cfg)
  alone, _ = run(model, {'params': params}, tokens[:1, :4])
  padded, pos = sampling.left_pad([np.asarray(tokens[0, :4]), np.asarray(tokens[1])], 0)
  cache = decoder.init_cache(cfg, batch=2, length=8)
  logits, _ = run(model, {'params': params}, jnp.asarray(padded), jnp.asarray(pos), cache)
  np.testing.assert_allclose(logits[0, 2:], alone[0], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize('key, value, message', [
    ('d_model', 30, 'not divisible'),
    ('positions', 'alibi', "positions='alibi'"),
    ('mlp', 'relu', "mlp='relu'"),
    ('dtype', 'float16', "dtype='float16'"),
    ('remat', 'some', "remat='some'"),
])
def test_bad_model_config(key, value, message):
  c = tiny.get_config().model
  c[key] = value
  with pytest.raises(ValueError, match=message):
    decoder.Config.from_config(c, VOCAB)


def test_decoding_past_max_len_is_refused_with_learned_positions_and_warned_otherwise(
    monkeypatch):
  warned = []
  monkeypatch.setattr(decoder.logging, 'log_first_n', lambda *args: warned.append(args))
  cfg = decoder.Config(vocab_size=11, num_layers=1, num_heads=1, d_model=8, mlp_dim=8,
                       max_len=16)
  decoder.check_decode(cfg, 10, 6)  # Exactly max_len: fine, silent.
  assert not warned
  decoder.check_decode(cfg, 10, 7)  # RoPE decodes past it, with a warning naming the lengths.
  assert len(warned) == 1 and warned[0][3:6] == (10, 7, 16)
  with pytest.raises(ValueError, match='exceed config.model.max_len=16'):
    decoder.check_decode(dataclasses.replace(cfg, positions='learned'), 10, 7)
