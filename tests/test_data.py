import os

import numpy as np
import pytest

from configs import tiny
from selffb.data import pipeline
from selffb.data import tokenizers
from selffb.tasks import addition
from selffb.tasks import addition_problems
from selffb.tasks import seq

TOK = tokenizers.ByteTokenizer()


def test_tokenizer_round_trip_and_eos():
  ids = TOK.encode('12+3=é')
  assert ids.tolist()[:3] == [ord('1') + 3, ord('2') + 3, ord('+') + 3]
  assert TOK.decode(ids) == '12+3=é'
  assert TOK.decode(list(TOK.encode('861')) + [TOK.eos_id, 50, 60]) == '861'


def test_addition_example_is_reversed():
  assert addition_problems.addition_example(123, 45) == {'prompt': '321+54=', 'answer': '861'}
  assert addition_problems.addition_example(95, 7) == {'prompt': '59+7=', 'answer': '201'}


def test_addition_splits_deterministic_disjoint_and_sized():
  kw = dict(min_digits=1, max_digits=3, num_train=2000, num_validation=100, num_test=60,
            test_digits=[1, 3, 4], seed=7)
  splits = addition_problems.addition_splits(**kw)
  assert splits == addition_problems.addition_splits(**kw)
  assert splits['train'] != addition_problems.addition_splits(**dict(kw, seed=8))['train']
  assert len(splits['test_1']) == 50  # Half of the 100 one-digit problems.
  assert len(splits['test_3']) == len(splits['test_4']) == 60
  for n in (3, 4):
    assert all(len(str(a)) == len(str(b)) == n for a, b in splits[f'test_{n}'])
  tests = set().union(*(splits[k] for k in splits if k.startswith('test_')))
  assert not tests & set(splits['train'])
  assert not tests & set(splits['validation'])
  assert not set(splits['validation']) & set(splits['train'])
  assert len(set(splits['validation'])) == 100 and len(splits['train']) == 2000
  assert all(0 <= a < 1000 and 0 <= b < 1000 for a, b in splits['train'])


def test_too_many_validation_problems_is_an_error():
  # One-digit operands: 100 problems, 5 held out for test_1.
  with pytest.raises(ValueError, match='lower num_validation'):
    addition_problems.addition_splits(1, 1, 10, 95, 5, [1], 0)
  # Training problems may repeat: more than there are distinct ones is fine.
  splits = addition_problems.addition_splits(1, 1, 500, 10, 5, [1], 0)
  assert len(splits['train']) == 500 and len(set(splits['train'])) <= 85


def test_encode_batch_masks_the_answer_only():
  batch = seq.encode_batch([{'prompt': b'21+3=', 'answer': b'51', 'digits': 2}], TOK, 10)
  tokens = [TOK.bos_id] + list(TOK.encode('21+3=51')) + [TOK.eos_id]
  np.testing.assert_array_equal(batch['inputs'][0], tokens[:-1] + [0] * 2)
  np.testing.assert_array_equal(batch['targets'][0], tokens[1:] + [0] * 2)
  # Targets are '2 1 + 3 = 5 1 eos': the answer digits are targets 5 and 6, eos is 7.
  np.testing.assert_array_equal(batch['loss_mask'][0], [0, 0, 0, 0, 0, 1, 1, 1, 0, 0])
  with pytest.raises(ValueError, match='exceeds seq_len=6'):
    seq.encode_batch([{'prompt': b'21+3=', 'answer': b'51', 'digits': 2}], TOK, 6)


@pytest.fixture(scope='module')
def tiny_splits(tmp_path_factory):
  c = tiny.get_config()
  c.data.data_dir = str(tmp_path_factory.mktemp('data'))
  return c, addition.load_splits(c, c.data.data_dir)


def test_splits_hold_what_the_generator_says_and_nothing_is_written(tiny_splits):
  c, splits = tiny_splits
  a = c.data.addition
  want = addition_problems.addition_splits(a.min_digits, a.max_digits, a.num_train,
                                           a.num_validation, a.num_test, list(a.test_digits),
                                           c.seed)
  assert set(splits) == set(want)
  for name, pairs in want.items():
    got = [(r['prompt'].decode(), r['answer'].decode()) for r in pipeline.read_all(splits[name])]
    expected = [tuple(addition_problems.addition_example(x, y).values()) for x, y in pairs]
    assert got == expected, name
  assert not os.listdir(c.data.data_dir)


def test_each_split_draws_from_its_own_stream():
  kw = dict(min_digits=1, max_digits=3, num_train=500, num_validation=50, num_test=20, seed=3)
  base = addition_problems.addition_splits(test_digits=[4, 5], **kw)
  # More test lengths beyond the training range, or fewer: train and validation stay the same.
  for other in ([4, 5, 6, 7], [5], [9, 4, 5]):
    more = addition_problems.addition_splits(test_digits=other, **kw)
    assert more['train'] == base['train'] and more['validation'] == base['validation'], other
    assert more['test_5'] == base['test_5']
  # Another seed moves every split.
  moved = addition_problems.addition_splits(test_digits=[4, 5], **dict(kw, seed=4))
  assert all(moved[k] != base[k] for k in base)
  # A test length inside the training range takes its problems out of train and validation.
  inside = addition_problems.addition_splits(test_digits=[2, 4, 5], **kw)
  assert not set(inside['test_2']) & (set(inside['train']) | set(inside['validation']))


def test_iterator_state_restores_the_stream(tiny_splits):
  _, splits = tiny_splits
  ds = seq.train_dataset(splits['train'], TOK, 13, 16, seed=0)
  it = pipeline.make_iterator(ds)
  for _ in range(40):  # Past the end of the first epoch (512 / 16 = 32 batches).
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  it2 = pipeline.make_iterator(ds)
  it2.set_state(state)
  for w in want:
    np.testing.assert_array_equal(next(it2)['inputs'], w['inputs'])


def test_hosts_split_each_global_batch(tiny_splits):
  _, splits = tiny_splits
  full = seq.train_dataset(splits['train'], TOK, 13, 16, seed=0)[5]
  parts = [seq.train_dataset(splits['train'], TOK, 13, 16, seed=0, process_index=i,
                             process_count=2)[5] for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([p['inputs'] for p in parts]), full['inputs'])
  with pytest.raises(ValueError, match='not divisible'):
    seq.train_dataset(splits['train'], TOK, 13, 15, seed=0, process_count=2)
