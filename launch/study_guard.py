#!/usr/bin/env python
"""One study per folder: ``python launch/study_guard.py STUDY_DIR CONFIG DS_CONFIG DATA_DIR``.

Records in ``STUDY_DIR/study.json`` what every point of the study is paired on — the recipe file, the DeepSpeed
config and the converted data (``_info.json``'s splits and sample counts) — by SHA-256 of their parsed content (so a
comment may change, a value may not; the recipe's ``log`` section, which changes only what is recorded, is left
out), and refuses (exit 2, one line
naming what changed) when the folder already holds a study made with anything else: runs with different data or
schedules would otherwise be compared as if paired. Exit 0 when the folder is new (it is created) or matches.
"""
import hashlib
import json
import sys
from pathlib import Path


RECORD_ONLY = ('log',)  # recipe sections that change what is recorded, never what is trained or measured


def _digest(path: Path, ignore=()) -> str:
    """SHA-256 of the file's parsed YAML/JSON content in canonical JSON (keys sorted), without the top-level
    sections in ``ignore``."""
    import yaml
    content = yaml.safe_load(path.read_text())   # JSON is YAML
    if isinstance(content, dict):
        content = {k: v for k, v in content.items() if k not in ignore}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def fingerprint(config: Path, ds_config: Path, data: Path) -> dict:
    info = json.loads((data / '_info.json').read_text())
    splits = {name: split.get('num_samples') for name, split in sorted(info.get('splits', {}).items())}
    return {'config': {'path': config.as_posix(), 'sha256': _digest(config, RECORD_ONLY)},
            'ds_config': {'path': ds_config.as_posix(), 'sha256': _digest(ds_config)},
            'data': {'name': info.get('name'), 'splits': splits, 'classes': info.get('classes'),
                     'sha256': hashlib.sha256(json.dumps(info.get('splits'), sort_keys=True).encode()).hexdigest()}}


def main(argv) -> int:
    if len(argv) != 4:
        print(__doc__.split('\n')[0], file=sys.stderr)
        return 2
    study, config, ds_config, data = (Path(a) for a in argv)
    for what, path in (('config', config), ('DeepSpeed config', ds_config), ('data _info.json', data / '_info.json')):
        if not path.is_file():
            print(f"study: error: {what} not found: {path}", file=sys.stderr)
            return 2
    mine = fingerprint(config, ds_config, data)
    marker = study / 'study.json'
    if marker.is_file():
        theirs = json.loads(marker.read_text())
        changed = [k for k in mine if theirs.get(k, {}).get('sha256') != mine[k]['sha256']]
        if changed:
            print(f"study: error: {study} holds a study made with another {' and '.join(changed)} "
                  f"({', '.join(theirs[k]['path'] if 'path' in theirs.get(k, {}) else k for k in changed)}); its "
                  f"runs would not pair with these. Use another study folder, or restore the original files",
                  file=sys.stderr)
            return 2
        return 0
    study.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix('.tmp')
    tmp.write_text(json.dumps(mine, indent=2) + '\n')
    tmp.replace(marker)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
