"""Datasets written once by TensorFlow-free tfds builders as ArrayRecord files and read back with
`as_data_source`. Each distinct setting is its own builder config, named by a hash of the
settings, so a config change writes a new version and never reuses stale data."""
import contextlib
import dataclasses
import hashlib
import io
import json

from absl import logging
import tensorflow_datasets as tfds

tfds.disable_progress_bar()


@dataclasses.dataclass
class Settings(tfds.core.BuilderConfig):
  settings: str = '{}'  # JSON of what the builder's generator is called with.


def build(builder_cls, settings, data_dir, fingerprint=''):
  """Writes builder_cls's dataset for `settings` (once) and opens its splits as random-access
  sources. `fingerprint` adds what the settings cannot show (e.g. input files' sizes and times)."""
  digest = hashlib.sha256((json.dumps(settings, sort_keys=True) + fingerprint).encode())
  name = 'v' + digest.hexdigest()[:12]
  builder = builder_cls(data_dir=data_dir, file_format='array_record',
                        config=Settings(name=name, settings=json.dumps(settings)))
  if not builder.is_prepared():
    logging.info('writing %s to %s', builder_cls.__name__, builder.data_path)
    with contextlib.redirect_stdout(io.StringIO()):  # tfds prints "Downloading and preparing".
      builder.download_and_prepare()
  return {split: builder.as_data_source(split=split) for split in builder.info.splits}


def settings_of(builder):
  """The settings a builder was created with by `build`."""
  return json.loads(builder.builder_config.settings)
