"""Real corpora from the files a user downloads, written small by each test: CoNLL-2003's four
columns for the ner task (and configs/bert_conll2003.py on them), WikiText-style split files
for the text task, and bits per byte beside perplexity."""
import math
import os

import numpy as np
import pytest

from configs import bert_conll2003
from configs import default
from selffb import errors
from selffb.data import conll
from selffb.modes import train as train_mode
from selffb.tasks import ner

BERT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'tiny_bert')
CONLL_TRAIN = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O
"""
CONLL_VALID = """-DOCSTART- -X- -X- O

Blackburn NNP B-NP B-PER
in IN B-PP O
BRUSSELS NNP B-NP B-LOC
"""
CONLL_TEST = """Peter NNP B-NP B-PER
said VBD B-VP O

EU NNP B-NP B-ORG
"""


def write_conll(d, names=('train.txt', 'valid.txt', 'test.txt'), texts=None):
  os.makedirs(d, exist_ok=True)
  for name, text in zip(names, texts or (CONLL_TRAIN, CONLL_VALID, CONLL_TEST)):
    with open(os.path.join(d, name), 'w') as f:
      f.write(text)
  return str(d)


def ner_config(**labelled):
  c = default.get_config()
  c.data.task = 'ner'
  c.data.labelled.update(labelled)
  return c


@pytest.mark.parametrize('names', [('train.txt', 'valid.txt', 'test.txt'),
                                   ('eng.train', 'eng.testa', 'eng.testb')])
def test_conll_directory_loads_through_the_ner_task(tmp_path, names):
  d = write_conll(tmp_path / 'conll', names)
  c = ner_config(conll_dir=d)
  assert not conll.problems(c.data.labelled)
  splits = ner.load_splits(c, '')
  labels = splits['train'].labels
  assert labels == ('O', 'B-LOC', 'B-MISC', 'B-ORG', 'B-PER', 'I-PER')
  assert [len(s) for s in (splits['train'], splits['validation'], splits['test'])] == [3, 1, 2]
  first = splits['train'].__getitems__([0])[0]
  assert first['words'] == ['EU', 'rejects', 'German', 'call', '.']
  assert [labels[t] for t in first['tags']] == ['B-ORG', 'O', 'B-MISC', 'O', 'O']
  test = splits['test'].__getitems__([0, 1])
  assert [labels[t] for t in test[1]['tags']] == ['B-ORG']


def test_conll_paths_by_key_win_over_the_directory(tmp_path):
  d = write_conll(tmp_path / 'a')
  other = write_conll(tmp_path / 'b', texts=(CONLL_TRAIN, CONLL_TEST, CONLL_VALID))
  c = ner_config(conll_dir=d, validation_path=os.path.join(other, 'valid.txt'))
  splits = ner.load_splits(c, '')
  assert len(splits['validation']) == 2


@pytest.mark.parametrize('text, line, words', [
    ('EU NNP B-NP B-ORG\nrejects VBZ O\n', 2, '3 column'),
    ('EU NNP B-NP B-ORG\n\nrejects VBZ B-VP ORG\n', 3, "'ORG' is not O"),
    ('EU NNP B-NP B-ORG\n\n\nrejects VBZ B-VP O extra\n', 4, '5 column')])
def test_a_malformed_conll_line_is_an_error_naming_file_and_line(tmp_path, text, line, words):
  d = write_conll(tmp_path / 'c', texts=(text, CONLL_VALID, CONLL_TEST))
  with pytest.raises(errors.InputError, match=f'train.txt:{line}: .*{words}'):
    ner.load_splits(ner_config(conll_dir=d), '')


def test_a_validation_tag_outside_the_training_set_names_file_and_line(tmp_path):
  valid = CONLL_VALID + '\nRome NNP B-NP B-GPE\n'
  d = write_conll(tmp_path / 'c', texts=(CONLL_TRAIN, valid, CONLL_TEST))
  with pytest.raises(errors.InputError, match=r"valid.txt:7: tag 'B-GPE' is not in the train"):
    ner.load_splits(ner_config(conll_dir=d), '')


def test_conll_config_problems_name_the_missing_pieces(tmp_path):
  d = write_conll(tmp_path / 'c', ('train.txt', 'valid.txt'))
  found = conll.problems(ner_config(train_path=os.path.join(d, 'train.txt')).data.labelled)
  assert any('validation_path is empty' in p for p in found)
  assert any('test_path is empty' in p for p in found)
  assert conll.problems(ner_config(conll_dir=str(tmp_path / 'nope')).data.labelled)
  with pytest.raises(errors.InputError, match='has no test file .*eng.testb or test.txt'):
    ner.load_splits(ner_config(conll_dir=d), '')


@pytest.mark.e2e  # About 40 s on 2 cores.
def test_bert_conll2003_fine_tunes_the_tiny_checkpoint_on_local_conll_files(tmp_path):
  d = write_conll(tmp_path / 'conll', ('eng.train', 'eng.testa', 'eng.testb'),
                  (CONLL_TRAIN * 8, CONLL_VALID, CONLL_TEST))
  c = bert_conll2003.get_config(BERT)
  c.data.labelled.conll_dir = d
  c.model.num_labels = 6
  c.data.update(batch_size=8, eval_batch_size=8, seq_len=32, data_dir=str(tmp_path / 'data'))
  c.train.update(num_steps=6, eval_every=3, checkpoint_every=6, log_every=2, patience=0)
  c.optim.update(warmup_steps=1, lr=1e-3)
  summary = train_mode.train_and_evaluate(c, str(tmp_path / 'run'))
  assert list(summary['report']['test']['tokens']['classes']) == [
      'O', 'B-LOC', 'B-MISC', 'B-ORG', 'B-PER', 'I-PER']
  assert np.isfinite(summary['report']['test']['scores']['f1'])
