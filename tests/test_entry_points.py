"""The console scripts of setup.py (``deepvit-convert``, ``deepvit-sweep``, ``deepvit-analyze``) name functions that
exist and run their command: each is called as the installed wrapper would call it (``sys.exit(func())`` on
``sys.argv``)."""
import ast
import sys
from importlib import import_module
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / 'setup.py'


def console_scripts():
    """``{name: 'module:function'}`` from setup.py's ``entry_points`` (read, not run: setup() would execute)."""
    call = next(n for n in ast.walk(ast.parse(SETUP.read_text()))
                if isinstance(n, ast.Call) and getattr(n.func, 'id', None) == 'setup')
    entry = ast.literal_eval(next(k.value for k in call.keywords if k.arg == 'entry_points'))
    return dict((side.strip() for side in line.split('=')) for line in entry['console_scripts'])


def load(target: str):
    module, _, func = target.partition(':')
    return getattr(import_module(module), func)


def test_console_scripts_are_the_three_commands():
    scripts = console_scripts()
    assert set(scripts) == {'deepvit-convert', 'deepvit-sweep', 'deepvit-analyze'}
    assert all(callable(load(t)) for t in scripts.values())


def test_sweep_script_counts_a_grid(monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', ['deepvit-sweep', '--experiment', 'e', '--families', 'vit,deepvit',
                                      '--depths', '2,4,8', '--seeds', '0,1', '--count'])
    assert load(console_scripts()['deepvit-sweep'])() == 0
    assert capsys.readouterr().out.strip() == '12'
    monkeypatch.setattr(sys, 'argv', ['deepvit-sweep', '--experiment', 'e', '--depths', '2,x', '--count'])
    assert load(console_scripts()['deepvit-sweep'])() == 2
    err = capsys.readouterr().err
    assert err.startswith('usage: deepvit-sweep') and "--depths must be comma-separated integers, got '2,x'" in err


@pytest.mark.parametrize('name', ['deepvit-convert', 'deepvit-analyze'])
def test_convert_and_analyze_scripts_report_bad_input(name, monkeypatch, capsys, tmp_path):
    """A missing source folder / store: exit status 2 and an error naming it (nothing is written)."""
    argv = {'deepvit-convert': ['--src', str(tmp_path / 'none'), '--out', str(tmp_path / 'out'), '--name', 'x'],
            'deepvit-analyze': ['--experiment', 'e', '--out', str(tmp_path / 'out'),
                                '--tracking-uri', f"sqlite:///{tmp_path / 'none.db'}"]}[name]
    monkeypatch.setattr(sys, 'argv', [name] + argv)
    assert load(console_scripts()[name])() == 2
    err = capsys.readouterr().err
    assert err.startswith('error:') and str(tmp_path / 'none') in err
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'none.db').exists()
