"""``deepvit/schema.py`` is the one place MLflow names are spelled; ``docs/mlflow_schema.md`` documents each of them."""
import ast
from pathlib import Path

from deepvit import schema

DOC = (Path(__file__).resolve().parents[1] / 'docs' / 'mlflow_schema.md').read_text()


def _names():
    for key, value in vars(schema).items():
        if key.isupper():
            yield from ((key, v) for v in (value if isinstance(value, tuple) else (value,)))


def test_every_schema_name_is_documented():
    missing = [(key, value) for key, value in _names() if f'`{value.split("{")[0]}' not in DOC]
    assert not missing, f'names in deepvit/schema.py missing from docs/mlflow_schema.md: {missing}'


def test_schema_module_imports_nothing():
    tree = ast.parse(Path(schema.__file__).read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
