"""Prepared tensorflow-datasets datasets by name, read TensorFlow-free: `tfds.data_source` over
their ArrayRecord files. Nothing is downloaded unless asked (`prepare`), and every way of
failing (unknown name, unprepared or TFRecord-only data, unknown split, missing feature) is an
InputError that names the config key and the fix."""
import importlib
import os

from absl import logging
import tensorflow_datasets as tfds

from selffb import errors


def _how_to_prepare(name, data_dir, dir_key):
  where = f' --data_dir={data_dir}' if data_dir else ''
  return (f'prepare it once where there is network (`tfds build {name} '
          f'--file_format=array_record{where}`; TensorFlow is needed for some datasets), then '
          f'set {dir_key} to that data dir')


class Source:
  """A tfds data source whose records read in batches (`__getitems__`) where the source allows
  (tfds.testing.mock_data's sources read one at a time)."""

  def __init__(self, source):
    self.source = source
    try:
      source.__getitems__([0] if len(source) else [])
      self._batched = True
    except TypeError:
      self._batched = False

  def __len__(self):
    return len(self.source)

  def __getitems__(self, indices):
    if self._batched:
      return self.source.__getitems__(list(indices))
    return [self.source[i] for i in indices]


def _builder(name, data_dir):
  """tfds.builder, after importing the tfds module that defines `name` where tfds's registry
  does not load it by itself (e.g. conll2003 in tensorflow_datasets.text)."""
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    for group in ('text', 'structured', 'translate', 'summarization', 'question_answering'):
      try:
        importlib.import_module(f"tensorflow_datasets.{group}.{name.split('/')[0]}")
      except ImportError:
        continue
      return tfds.builder(name, data_dir=data_dir)
    raise


def open_split(name, split, data_dir, key, prepare=False, split_key='the split',
               dir_key='the data dir'):
  """A prepared dataset's split as a Source and the dataset's feature names; `key`, `split_key`
  and `dir_key` name the config keys of the dataset, the split and the data dir (for messages).
  With `prepare`, a dataset that is not prepared is downloaded and written as ArrayRecord first
  (this needs network)."""
  data_dir = os.path.expanduser(data_dir) or None
  try:
    builder = _builder(name, data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise errors.InputError(
        f'{key}={name!r} is not a dataset tensorflow-datasets knows (its catalog: '
        "https://www.tensorflow.org/datasets/catalog; a config goes after a slash, e.g. "
        f"'wiki40b/en'); a builder of your own: {_how_to_prepare(name, data_dir, dir_key)}."
    ) from None
  except ValueError as e:  # e.g. an unknown config after the slash.
    raise errors.InputError(f'{key}={name!r}: {e}') from None
  features = sorted(builder.info.features.keys())
  try:
    return Source(builder.as_data_source(split=split)), features
  except (ValueError, KeyError) as e:
    if builder.is_prepared():
      raise errors.InputError(
          f'{split_key}={split!r}: {key}={name!r} has no such split ({e}); its splits are '
          f'{sorted(builder.info.splits)} (tfds split syntax, e.g. train[:95%]).') from None
    failure = e
  except (NotImplementedError, FileNotFoundError, AssertionError) as e:
    failure = e
  if prepare and not builder.is_prepared():
    logging.info('preparing %s in %s (ArrayRecord)', name, builder.data_dir)
    try:
      builder.download_and_prepare(file_format='array_record')
    except Exception as e:  # pylint: disable=broad-except  (network, TensorFlow-only builders)
      raise errors.InputError(f'{key}={name!r} is not prepared and preparing it here failed '
                              f'({type(e).__name__}: {str(e)[:200]}): '
                              f'{_how_to_prepare(name, data_dir, dir_key)}.') from None
    return open_split(name, split, data_dir or '', key, False, split_key, dir_key)
  raise errors.InputError(
      f'{key}={name!r} split {split!r} cannot be read from '
      f'{data_dir or "the default tfds data dir"} ({type(failure).__name__}: '
      f'{str(failure).splitlines()[0][:160]}): {_how_to_prepare(name, data_dir, dir_key)}.')


def open_labelled(name, split, data_dir, label_feature, key, split_key, dir_key, prepare=False):
  """open_split for a dataset of labelled examples: (the split's Source, the names of the
  `label_feature` classes, a ClassLabel or a sequence of them); with `prepare`, prepared first
  where it is not (conll2003's builder reads its download without TensorFlow)."""
  source, features = open_split(name, split, data_dir, key, prepare, split_key, dir_key)
  if label_feature not in features:
    raise errors.InputError(f'{key}={name!r} has no feature {label_feature!r} (its features: '
                            f'{features}): set config.data.labelled.label_feature.')
  feature = _builder(name, os.path.expanduser(data_dir) or None).info.features[label_feature]
  feature = getattr(feature, 'feature', feature)  # A Sequence's elements.
  if not hasattr(feature, 'names'):
    raise errors.InputError(f'{key}={name!r}: feature {label_feature!r} is not a ClassLabel '
                            '(or a sequence of them): set config.data.labelled.label_feature.')
  return source, list(feature.names)
