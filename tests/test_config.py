import importlib
import os
import re

import pytest

from configs import default
from configs import tiny
from selffb.assemble import checks
from selffb.assemble import ranges
from selffb.assemble import resume


def flat_keys(c, prefix=''):
  keys = set()
  for k, v in c.items():
    keys |= flat_keys(v, f'{prefix}{k}.') if hasattr(v, 'items') else {prefix + k}
  return keys


def test_every_default_key_has_a_comment():
  assigned = 0
  for line in open(default.__file__):
    if re.match(r'\s*c\.[\w.]+ = ', line) and 'ConfigDict()' not in line.split('#')[0]:
      assigned += 1
      assert '#' in line, f'no comment: {line.strip()}'
  assert assigned == len(flat_keys(default.get_config()))


def test_tiny_changes_only_declared_keys():
  # The config is unlocked while a file edits it: a typo there would add a key silently.
  assert flat_keys(tiny.get_config()) == flat_keys(default.get_config())


@pytest.mark.parametrize('name', sorted(
    f[:-3] for f in os.listdir(os.path.dirname(default.__file__))
    if f.endswith('.py') and f != '__init__.py'))
def test_every_config_declares_only_default_keys_and_validates(name):
  module = importlib.import_module(f'configs.{name}')
  c = module.get_config(getattr(module, 'EXAMPLE_ARG', None))  # A config that needs its arg.
  # config.evals names its own entries (an evaluator's keys are its own).
  declared = lambda keys: {k for k in keys if not k.startswith('evals.')}
  assert declared(flat_keys(c)) == declared(flat_keys(default.get_config()))
  assert checks.problems(c, 1) == []


CHECKED_ELSEWHERE = ('mesh.data', 'mesh.fsdp', 'mesh.tensor', 'model.attention_block',
                     'optim.feedback_ema', 'optim.feedback_scale_min', 'optim.feedback_scale_max',
                     'optim.feedback_floor',
                     'sample.temperature', 'sample.top_k', 'sample.top_p',
                     'sample.max_new_tokens', 'feedback.weights.', 'selftrain.weights.',
                     'data.addition.', 'data.feedback.correction_weight',
                     'data.feedback.original_weight', 'data.feedback.pair_sft_weight',
                     'feedback.preference.', 'data.strings.', 'data.pairs.',
                     'data.sentencepiece.vocab_size', 'data.sentencepiece.character_coverage')


def test_every_numeric_key_has_a_checked_range():
  c = default.get_config()
  numeric = set()
  for key in flat_keys(c):
    node = c
    for part in key.split('.'):
      node = node[part]
    if isinstance(node, (int, float)) and not isinstance(node, bool):
      numeric.add(key)
  unchecked = {k for k in numeric - set(ranges.RANGES) if not k.startswith(CHECKED_ELSEWHERE)}
  assert not unchecked
  assert set(ranges.RANGES) <= numeric  # No stale entry.


def test_values_that_cannot_be_meant_are_all_reported():
  c = tiny.get_config()
  c.optim.lr = -1e-3  # Gradient ascent.
  c.model.dropout = 1.5
  c.selftrain.lr = float('nan')
  c.model.num_heads = 0  # Would divide by zero in the model's own check.
  c.data.eval_batch_size = 12  # Not divisible by the 8 batch shards.
  found = checks.problems(c, 8)
  assert len(found) == 5, found
  for fragment in ('optim.lr=-0.001 must be a number in [0, inf)',
                   'model.dropout=1.5 must be a number in [0, 1)', 'selftrain.lr=nan',
                   'model.num_heads=0', 'eval_batch_size=12 is not divisible by the 8'):
    assert any(fragment in p for p in found), fragment


def test_a_run_saved_before_the_layout_move_still_resumes_and_evaluates():
  old = default.get_config().to_dict()  # As config.json and checkpoints store a config.
  del old['model']['kind'], old['data']['tokenizer'], old['evals']
  del old['optim']['feedback_scale_at'], old['feedback']['blend']  # Issue 17's new arms.
  del old['feedback']['blend_fraction']
  del old['data']['feedback'], old['feedback']['preference'], old['finetune']  # Issue 21's.
  del old['data']['strings'], old['data']['pairs']  # Issue 20's.
  for key in ('head', 'num_labels', 'pooling', 'norm_position', 'norm_eps', 'type_vocab_size',
              'init_from'):  # Issue 19's.
    del old['model'][key]
  del old['data']['wordpiece'], old['data']['mlm'], old['data']['labelled']
  del old['optim']['freeze'], old['optim']['top_k'], old['train']['select_metric']
  old['model']['vocab_size'] = 259
  old['selftrain']['verifier'] = 'addition'
  assert resume.config_changes(old, default.get_config()) == {}
  old['model']['d_model'] = 32
  assert resume.config_changes(old, default.get_config()) == {'model.d_model': (32, 64)}


def test_nan_sampling_temperature_is_reported():
  c = tiny.get_config()
  c.sample.temperature = float('nan')
  assert any('config.sample.temperature=nan' in p for p in checks.problems(c, 1))
