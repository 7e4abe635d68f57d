"""The self-improvement recipe's knobs (Lee et al., ICML 2025): both operands n digits, the
rounds' mix, the optimizer kept across rounds, the round's warmup-stable-decay schedule."""
import collections

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs import default
from configs import tiny
from selffb import optim
from selffb.assemble import checks
from selffb.data import pipeline
from selffb.modes import selftrain
from selffb.modes import selftrain_recipe
from selffb.tasks import addition
from selffb.tasks import addition_problems


def test_both_n_prompts_have_both_operands_n_digits():
  rng = np.random.default_rng(0)
  exclude = {(a, b) for a in range(100, 1000) for b in range(100, 110)}
  pairs = addition_problems.draw_problems(rng, 3, 300, exclude, both=True)
  assert len(set(pairs)) == 300 and not set(pairs) & exclude
  assert all(len(str(a)) == len(str(b)) == 3 for a, b in pairs)
  c = tiny.get_config()
  c.selftrain.prompts_per_round = 50
  c.selftrain.operands = 'both_n'
  for text in addition.round_prompts(c, 1, 4, set(), addition.batch_format(c)):
    a, b = text[:-1].split('+')
    assert len(a) == len(b) == 4 and a[-1] != '0' and b[-1] != '0'  # Reversed: no leading 0.
  c.selftrain.operands = 'one_n'  # Today's prompts: one operand shorter in most problems.
  texts = addition.round_prompts(c, 1, 4, set(), addition.batch_format(c))
  assert sum(min(len(p) for p in t[:-1].split('+')) < 4 for t in texts) > 25


def _tagged(tag, n):
  return [{'tag': tag, 'i': i} for i in range(n)]


def test_rounds_mix_gives_the_newest_share_and_weights_the_older_sources():
  base = pipeline.ListSource(_tagged('base', 1000))
  rounds = [_tagged('r1', 50), _tagged('r2', 30), _tagged('r3', 80)]
  want = {'r3': 0.5, 'base': 0.5 * 16 / 18, 'r1': 0.5 / 18, 'r2': 0.5 / 18}
  source = pipeline.mix_rounds(base, rounds, newest_share=0.5, base_weight=16.0)
  epoch = collections.Counter(r['tag'] for r in source.__getitems__(list(range(len(source)))))
  for tag, share in want.items():  # A whole epoch holds the shares exactly (to rounding).
    assert epoch[tag] / len(source) == pytest.approx(share, abs=1 / len(source))
  assert len({(r['tag'], r['i']) for r in source.__getitems__(list(range(len(source))))}) == 1160
  # The training pipeline's shuffled draws: 4,000 rows, each share within 4 standard errors.
  ds = pipeline.train_dataset(source, lambda recs, index, rows: recs, 100, seed=0)
  drawn = collections.Counter(r['tag'] for b in range(40) for r in ds[b])
  for tag, share in want.items():
    assert abs(drawn[tag] / 4000 - share) < 4 * np.sqrt(share * (1 - share) / 4000), tag


def test_rounds_mix_drops_empty_rounds_and_pooled_is_todays_mix():
  base = pipeline.ListSource(_tagged('base', 100))
  assert pipeline.mix_rounds(base, [], 0.5, 16.0) is base
  assert pipeline.mix_rounds(base, [[], []], 0.5, 16.0) is base
  source = pipeline.mix_rounds(base, [_tagged('r1', 10), []], 0.5, 16.0)  # Newest kept none.
  tags = collections.Counter(r['tag'] for r in source.__getitems__(list(range(len(source)))))
  assert tags['r1'] / len(source) == pytest.approx(1 / 17, abs=1 / len(source))
  st = default.get_config().selftrain
  rounds = [_tagged('r1', 10), _tagged('r2', 5)]
  pooled = selftrain_recipe.round_source(base, rounds, st)
  today = pipeline.mix(base, rounds[0] + rounds[1], st.mix, st.max_self_examples)
  assert pooled.__getitems__(list(range(len(pooled)))) == today.__getitems__(
      list(range(len(today))))


def test_round_schedule_wsd_jumps_to_the_peak_holds_then_decays():
  c = default.get_config()
  before = selftrain_recipe.round_config(c, 1, 100)  # 'optim': today's warmup then cosine.
  assert before.optim.schedule == 'warmup_cosine' and before.optim.warmup_steps == 20
  c.selftrain.update(schedule='wsd', warmup_steps=0, decay_fraction=0.2, lr=1e-3)
  rc = selftrain_recipe.round_config(c, 1, 100)
  lr = optim.make_schedule(rc.optim, rc.train.num_steps)
  got = [float(lr(step)) for step in (0, 1, 50, 80, 90, 95, 100)]
  np.testing.assert_allclose(got, [1e-3, 1e-3, 1e-3, 1e-3, 5e-4, 2.5e-4, 0.0], atol=1e-9)


def test_new_keys_out_of_range_are_named():
  c = tiny.get_config()
  c.selftrain.update(base_weight=0.0, decay_fraction=0.0, operands='both', mixing='newest',
                     schedule='cosine')
  found = '\n'.join(checks.problems(c, 1))
  for key in ('selftrain.base_weight', 'selftrain.decay_fraction', 'selftrain.operands',
              'selftrain.mixing', 'selftrain.schedule'):
    assert f'config.{key}=' in found, key
  c = tiny.get_config()
  c.selftrain.update(mixing='rounds', max_self_examples=100)
  assert 'max_self_examples' in '\n'.join(checks.problems(c, 1))


def _adam(opt_state):
  return next(s for s in jax.tree.leaves(
      opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
              if isinstance(s, optax.ScaleByAdamState))


def test_carry_optimizer_keeps_the_moments_and_restarts_the_schedule():
  c = default.get_config()
  tx = optim.make_optimizer(c.optim, 1000)
  params = {'w': np.ones((2, 3), np.float32)}
  previous = tx.init(params)
  for _ in range(3):
    _, previous = tx.update({'w': np.full((2, 3), 0.5, np.float32)}, previous, params,
                            feedback=1.0)
  carried = selftrain_recipe.carry_optimizer(tx.init(params), previous)
  assert int(_adam(carried).count) == 3
  np.testing.assert_array_equal(_adam(carried).mu['w'], _adam(previous).mu['w'])
  schedule = [s for s in jax.tree.leaves(carried, is_leaf=lambda s: isinstance(
      s, optax.ScaleByScheduleState)) if isinstance(s, optax.ScaleByScheduleState)]
  assert [int(s.count) for s in schedule] == [0]


# ---- A tiny two-round run (round 0, round 1), with the optimizer kept and reset. ----

def _opt_state(directory, step):
  """The saved Adam moments and count of a round's checkpoint at `step`, by leaf path."""
  manager = ocp.CheckpointManager(f'{directory}/checkpoints')
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  leaves = jax.tree_util.tree_flatten_with_path(state.state['opt_state'])[0]
  pick = lambda name: {jax.tree_util.keystr(p).replace(f"['{name}']", ''): np.asarray(x)
                       for p, x in leaves if f"['{name}']" in jax.tree_util.keystr(p)}
  count = [int(x) for p, x in leaves if jax.tree_util.keystr(p).endswith("['count']")]
  return pick('mu'), pick('nu'), count, manager.latest_step()


@pytest.mark.slow
@pytest.mark.parametrize('keep', [True, False])
def test_optimizer_kept_or_reset_across_a_round_boundary(keep, tmp_path):
  c = tiny.get_config()
  c.data.data_dir = str(tmp_path / 'data')
  c.train.update(num_steps=4, eval_every=4, checkpoint_every=1, max_checkpoints=8)
  c.optim.warmup_steps = 1
  c.selftrain.update(rounds=1, start_digits=0, prompts_per_round=16, steps_per_round=3,
                     warmup_steps=0, weights={'verifier': 0.0, 'format': 1.0}, theta=0.0,
                     val_per_length=8, keep_optimizer=keep, schedule='wsd')
  workdir = tmp_path / 'run'
  selftrain.run_selftrain(c, str(workdir))
  mu0, nu0, count0, last0 = _opt_state(workdir / 'rounds' / 'r00', 4)
  mu1, nu1, count1, _ = _opt_state(workdir / 'rounds' / 'r01', 1)  # After round 1's 1st step.
  assert last0 == 4
  b1, b2 = c.optim.b1, c.optim.b2
  keys = [k for k in mu1 if np.abs(mu1[k]).max() > 0]
  assert keys
  for k in keys:
    prev_mu, prev_nu = (mu0[k], nu0[k]) if keep else (0 * mu0[k], 0 * nu0[k])
    g = (mu1[k] - b1 * prev_mu) / (1 - b1)  # The step's gradient, if it started from prev.
    np.testing.assert_allclose(nu1[k], b2 * prev_nu + (1 - b2) * g ** 2, rtol=2e-3, atol=1e-12)
  adam_count, schedule_count = max(count1), min(count1)
  assert adam_count == (max(count0) + 1 if keep else 1)
  assert schedule_count == 1  # The round's schedule starts over either way.
  if keep:  # And the fresh-moments reading does not fit round 1's first step.
    k = max(keys, key=lambda k: np.abs(nu0[k]).max())
    assert not np.allclose(nu1[k], (1 - b2) * (mu1[k] / (1 - b1)) ** 2, rtol=2e-3, atol=1e-12)
