import importlib
import os
import re

import pytest

from configs import default
from configs import tiny
from selffb.train import checks


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
  c = importlib.import_module(f'configs.{name}').get_config()
  assert flat_keys(c) == flat_keys(default.get_config())
  assert checks.problems(c, 1) == []
