"""Read and write ``_info.json``, the dataset description next to WebDataset shards.

Schema (the one timm's WebDataset reader parses, ``timm/data/readers/reader_wds.py::_parse_split_info``, and the one the
public ``timm/imagenet-1k-wds`` shards ship), plus the class names, which timm ignores::

    {"name": "imagenet1k",
     "classes": ["n01440764", ...], "num_classes": 1000,          # our addition
     "channels": 3,                                               # our addition: 1 if every image is grayscale
     "max_side": 512,                                             # our addition: images resized at conversion
     "splits": {"train": {"name": "train", "num_samples": 1281167,
                          "filenames": ["imagenet1k-train-0000.tar", ...],   # relative to the directory
                          "shard_lengths": [1251, ...]}, ...}}
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

INFO_NAME = '_info.json'


@dataclass(frozen=True)
class SplitInfo:
    """One split: shard file names (relative to the dataset directory) and samples per shard."""
    name: str
    filenames: tuple[str, ...]
    shard_lengths: tuple[int, ...]

    @property
    def num_samples(self) -> int:
        return sum(self.shard_lengths)

    def to_json(self) -> dict:
        return {'name': self.name, 'num_samples': self.num_samples,
                'filenames': list(self.filenames), 'shard_lengths': list(self.shard_lengths)}


@dataclass(frozen=True)
class DatasetInfo:
    """Contents of ``_info.json``: dataset name, class names (may be empty for foreign shards) and splits."""
    name: str
    splits: dict[str, SplitInfo]
    classes: tuple[str, ...] = field(default=())
    channels: int | None = None   # our addition: 1 when every image is grayscale, 3 otherwise; None: not recorded
    max_side: int | None = None   # our addition: the converter's --max-side (longer sides above it were resized)

    def to_json(self) -> dict:
        out = {'name': self.name, 'splits': {k: s.to_json() for k, s in self.splits.items()}}
        if self.classes:
            out.update(classes=list(self.classes), num_classes=len(self.classes))
        if self.channels is not None:
            out['channels'] = self.channels
        if self.max_side is not None:
            out['max_side'] = self.max_side
        return out

    @classmethod
    def from_json(cls, data: dict, where: str = INFO_NAME) -> DatasetInfo:
        """Parse the dict of an ``_info.json``. Raises ``ValueError`` naming the file and the bad field."""
        try:
            splits = {}
            for key, s in data['splits'].items():
                lengths = tuple(int(n) for n in s['shard_lengths'])
                filenames = tuple(s['filenames'])
                if len(lengths) != len(filenames):
                    raise ValueError(f'split {key!r}: {len(filenames)} filenames but {len(lengths)} shard_lengths')
                if 'num_samples' in s and int(s['num_samples']) != sum(lengths):
                    raise ValueError(f'split {key!r}: num_samples={s["num_samples"]} != sum(shard_lengths)={sum(lengths)}')
                splits[key] = SplitInfo(s.get('name', key), filenames, lengths)
            channels = data.get('channels')
            if channels is not None and channels not in (1, 3):
                raise ValueError(f'channels must be 1 or 3, got {channels!r}')
            max_side = data.get('max_side')
            if max_side is not None and (not isinstance(max_side, int) or max_side < 1):
                raise ValueError(f'max_side must be a positive integer, got {max_side!r}')
            return cls(str(data.get('name', '')), splits, tuple(data.get('classes', ())), channels, max_side)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f'{where}: not a valid _info.json ({type(e).__name__}: {e})') from None


def read_info(location: str | os.PathLike) -> DatasetInfo:
    """Read ``LOCATION/_info.json``; LOCATION is a directory or any URL ``webdataset.gopen`` opens.

    Raises ``FileNotFoundError`` when a local file is missing, ``ValueError`` when its content is not the schema above.
    """
    location = str(location)
    path = location.rstrip('/') + '/' + INFO_NAME
    if '://' in location or location.startswith('pipe:'):
        import webdataset as wds
        with wds.gopen(path) as f:
            data = json.load(f)
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f'no {INFO_NAME} in directory {location!r}')
        with open(path) as f:
            data = json.load(f)
    return DatasetInfo.from_json(data, path)


def write_info(directory: str | os.PathLike, info: DatasetInfo) -> Path:
    """Write ``DIRECTORY/_info.json`` atomically (temporary file, fsync, rename). Returns its path."""
    from ..atomic import atomic_file
    path = Path(directory) / INFO_NAME
    with atomic_file(path) as f:
        f.write((json.dumps(info.to_json(), indent=1) + '\n').encode())
    return path
