import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from selffb import sampling
from selffb import sharding
from selffb.data import tokenizers
from selffb.models import decoder

V = 8
NEG = -1e9

VOCAB = tokenizers.ByteTokenizer.vocab_size


def logits_of(module, variables, *args, **kw):
  """(logits, cache) of a model call."""
  outputs, cache = module.apply(variables, *args, **kw)
  return outputs['logits'], cache


def counting_step(token_B, pos_B, cache):
  """A fake model whose next token is always token + 1 (mod V), with probability ~1."""
  del pos_B
  return 10.0 * jax.nn.one_hot((token_B + 1) % V, V), cache


def fixed_step(logits_V):
  return lambda token_B, pos_B, cache: (jnp.broadcast_to(logits_V, (token_B.shape[0], V)), cache)


def run(step_fn, first_BxV, sp, eos_id=-1, seed=0):
  batch = first_BxV.shape[0]
  out = jax.jit(lambda l: sampling.decode(step_fn, l, {}, jnp.zeros(batch, jnp.int32),
                                          jax.random.key(seed), sp=sp, eos_id=eos_id,
                                          pad_id=0))(first_BxV)
  return tuple(np.asarray(x) for x in out)


def test_greedy_on_fake_logits_stops_each_row_at_eos():
  first = 10.0 * jax.nn.one_hot(jnp.array([3, 5]), V)
  tokens, logprobs = run(counting_step, first, sampling.SamplingParams(max_new_tokens=6), eos_id=6)
  np.testing.assert_array_equal(tokens, [[3, 4, 5, 6, 0, 0], [5, 6, 0, 0, 0, 0]])
  top = 10.0 - np.log(np.exp(10.0) + V - 1)
  np.testing.assert_allclose(logprobs, [[top] * 4 + [0, 0], [top] * 2 + [0] * 4], atol=1e-6)
  # Row 0 is unaffected by row 1 having stopped.
  alone, _ = run(counting_step, first[:1], sampling.SamplingParams(max_new_tokens=6), eos_id=6)
  np.testing.assert_array_equal(alone[0], tokens[0])


PROBS = np.array([0.5, 0.2, 0.15, 0.1, 0.05, 0.0, 0.0, 0.0])
LOGITS = jnp.asarray(np.log(np.maximum(PROBS, 1e-30)), jnp.float32)


def test_seeded_temperature_sampling_is_exact_and_reproducible():
  sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=5)
  tokens, _ = run(fixed_step(LOGITS), LOGITS[None], sp, seed=42)
  expected = [int(jax.random.categorical(jax.random.fold_in(jax.random.key(42), i), LOGITS[None]
                                         )[0]) for i in range(5)]
  np.testing.assert_array_equal(tokens[0], expected)
  np.testing.assert_array_equal(run(fixed_step(LOGITS), LOGITS[None], sp, seed=42)[0], tokens)
  assert not np.array_equal(run(fixed_step(LOGITS), jnp.tile(LOGITS, (8, 1)), sp, seed=1)[0],
                            run(fixed_step(LOGITS), jnp.tile(LOGITS, (8, 1)), sp, seed=2)[0])


@pytest.mark.parametrize('temperature', [1.0, 0.5])
def test_temperature_sampling_follows_the_tempered_distribution(temperature):
  sp = sampling.SamplingParams(temperature=temperature, max_new_tokens=1)
  tokens, logprobs = run(fixed_step(LOGITS), jnp.tile(LOGITS, (4000, 1)), sp, seed=0)
  want = PROBS ** (1 / temperature) / np.sum(PROBS ** (1 / temperature))
  freq = np.bincount(tokens[:, 0], minlength=V) / 4000
  np.testing.assert_allclose(freq, want, atol=0.03)
  # Log-probabilities are the model's own (temperature 1), whatever the sampling temperature.
  np.testing.assert_allclose(logprobs[:, 0], np.log(PROBS[tokens[:, 0]]), rtol=1e-5)


def kept(masked):
  return set(np.flatnonzero(np.isfinite(np.asarray(masked[0]))).tolist())


def test_top_k_and_top_p_masks_keep_exactly_the_right_tokens():
  logits = LOGITS[None]
  assert kept(sampling.mask_top_k(logits, 2)) == {0, 1}
  assert kept(sampling.mask_top_k(logits, 4)) == {0, 1, 2, 3}
  assert kept(sampling.mask_top_p(logits, 0.5)) == {0}  # 0.5 alone reaches 0.5.
  assert kept(sampling.mask_top_p(logits, 0.6)) == {0, 1}
  assert kept(sampling.mask_top_p(logits, 0.8)) == {0, 1, 2}
  assert kept(sampling.mask_top_p(logits, 0.99)) == {0, 1, 2, 3, 4}
  assert kept(sampling.mask_top_p(sampling.mask_top_k(logits, 2), 0.9)) == {0, 1}
  # Kept logits are unchanged.
  np.testing.assert_array_equal(sampling.mask_top_k(logits, 2)[0, :2], logits[0, :2])


@pytest.mark.parametrize('overrides', [dict(top_k=2), dict(top_p=0.6), dict(top_k=3, top_p=0.6)])
def test_filtered_sampling_draws_only_kept_tokens(overrides):
  sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=1, **overrides)
  tokens, _ = run(fixed_step(LOGITS), jnp.tile(LOGITS, (2000, 1)), sp)
  freq = np.bincount(tokens[:, 0], minlength=V) / 2000
  np.testing.assert_allclose(freq[:2], [0.5 / 0.7, 0.2 / 0.7], atol=0.04)
  assert freq[2:].sum() == 0


@pytest.mark.parametrize('kw, message', [
    (dict(temperature=-1.0), 'temperature'), (dict(top_p=0.0), 'top_p'),
    (dict(top_k=-1), 'top_k'), (dict(max_new_tokens=0), 'max_new_tokens')])
def test_bad_sampling_params(kw, message):
  with pytest.raises(ValueError, match=message):
    sampling.SamplingParams(**kw)


@pytest.fixture(scope='module')
def tiny_model():
  cfg = decoder.Config.from_config(tiny.get_config().model, VOCAB)
  tokens = jnp.ones((1, 4), jnp.int32)
  params = nn.unbox(decoder.Decoder(cfg).init(jax.random.key(3), tokens)['params'])
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, cfg.vocab_size, n).astype(np.int32) for n in (3, 9, 6, 1)]
  return cfg, params, prompts


def gen(tiny_model, prompts, sp, **kw):
  cfg, params, _ = tiny_model
  return sampling.generate(params, prompts, model=decoder, cfg=cfg, sp=sp, eos_id=-1, pad_id=0,
                           **kw)


@pytest.mark.slow
def test_batched_prompts_of_different_lengths_match_each_alone(tiny_model):
  sp = sampling.SamplingParams(max_new_tokens=7)
  batched = gen(tiny_model, tiny_model[2], sp)
  for prompt, (tokens, logprobs) in zip(tiny_model[2], batched):
    (alone_tokens, alone_logprobs), = gen(tiny_model, [prompt], sp)
    np.testing.assert_array_equal(tokens, alone_tokens)
    np.testing.assert_allclose(logprobs, alone_logprobs, atol=1e-5)


@pytest.mark.slow
def test_logprobs_match_a_full_forward_pass(tiny_model):
  cfg, params, prompts = tiny_model
  sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=6)
  for prompt, (tokens, logprobs) in zip(prompts, gen(tiny_model, prompts, sp, seed=5)):
    seq = jnp.asarray(np.concatenate([prompt, tokens]))[None]
    logits, _ = logits_of(decoder.Decoder(cfg), {'params': params}, seq)
    logp = jax.nn.log_softmax(logits[0, len(prompt) - 1:-1])
    np.testing.assert_allclose(logprobs, logp[np.arange(6), tokens], atol=1e-5)


@pytest.mark.slow
def test_sharded_sampling_equals_single_device(tiny_model):
  mesh = sharding.make_mesh(tiny.get_config().mesh)  # 8 simulated devices on the data axis.
  assert mesh.shape['data'] == 8
  for sp in (sampling.SamplingParams(max_new_tokens=5),
             sampling.SamplingParams(temperature=1.0, top_k=20, max_new_tokens=5)):
    single = gen(tiny_model, tiny_model[2], sp, seed=4)
    sharded = gen(tiny_model, tiny_model[2], sp, seed=4, mesh=mesh)
    for (a, la), (b, lb) in zip(single, sharded):
      np.testing.assert_array_equal(a, b)
      np.testing.assert_allclose(la, lb, atol=1e-5)


@pytest.mark.slow
def test_prompt_lengths_share_a_bucket(tiny_model):
  sp = sampling.SamplingParams(max_new_tokens=3)
  before = sampling._generate._cache_size()
  gen(tiny_model, [np.arange(3, 8)], sp)  # 5 tokens: bucket 8.
  gen(tiny_model, [np.arange(3, 10)], sp)  # 7 tokens: bucket 8, no new compile.
  assert sampling._generate._cache_size() == before + 1
  gen(tiny_model, [np.arange(3, 12)], sp)  # 9 tokens: bucket 16.
  assert sampling._generate._cache_size() == before + 2
  assert [sampling.bucket(n) for n in (1, 8, 9, 100, 128, 129)] == [8, 8, 16, 128, 128, 256]
