"""The switch between skipping and failing the tests that need root or system tools (tests/launching.py)."""
import pytest


def test_system_tests_skip_with_a_reason_on_a_bare_machine_and_fail_under_ci(monkeypatch):
    """Issue 22.7: the README's test command passes on a machine without root or sshd/pdsh (the tests that need them
    skip, saying what is missing), while .ci/run (DEEPVIT_REQUIRE_SYSTEM_TESTS=1) turns that skip into a failure."""
    import launching
    from _pytest.outcomes import Failed, Skipped
    monkeypatch.delenv('DEEPVIT_REQUIRE_SYSTEM_TESTS', raising=False)
    launching.require_system([], 'the two-host test')                       # nothing missing: runs
    with pytest.raises(Skipped, match=r'the two-host test needs pdsh, root \(ip netns\)'):
        launching.require_system(['pdsh', 'root (ip netns)'], 'the two-host test')
    monkeypatch.setenv('DEEPVIT_REQUIRE_SYSTEM_TESTS', '1')
    with pytest.raises(Failed, match='DEEPVIT_REQUIRE_SYSTEM_TESTS=1 demands it'):
        launching.require_system(['pdsh'], 'the two-host test')
    assert 'DEEPVIT_REQUIRE_SYSTEM_TESTS=1 bash tests/run.sh' in (launching.ROOT / '.ci' / 'run').read_text()


@pytest.mark.parametrize('lists', ['present', 'empty', 'unreachable'])
def test_run_sh_installs_the_tools_on_a_fresh_container_or_says_why_and_runs_the_suite(lists, tmp_path):
    """The README's test command as root on a machine without pdsh: apt-get installs the tools (updating empty
    package lists first when the install fails), or the script says in one line that it could not, and pytest runs
    either way. apt-get, id and python are stand-ins that record their calls; pdsh is off PATH."""
    import os
    import shutil
    import subprocess
    import launching
    bin_dir, calls = tmp_path / 'bin', tmp_path / 'calls'
    bin_dir.mkdir()
    updated = tmp_path / 'updated'
    install_ok = {'present': 'true', 'empty': f'test -e {updated}', 'unreachable': 'false'}[lists]
    fakes = {
        'id': 'echo 0',
        'apt-get': f'echo "apt-get $*" >> {calls}\n'
                   f'case "$1" in update) [ {lists} != unreachable ] && : > {updated} ;; '
                   f'install) {install_ok} ;; esac',
        'python': f'echo "python $*" >> {calls}',
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text(f'#!/bin/sh\n{body}\n')
        (bin_dir / name).chmod(0o755)
    os.symlink(shutil.which('dirname'), bin_dir / 'dirname')
    done = subprocess.run([shutil.which('bash'), str(launching.ROOT / 'tests' / 'run.sh'), '-m', 'not slow'],
                          env={'PATH': str(bin_dir)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = calls.read_text().splitlines()
    assert lines[-1] == 'python -m pytest -q -m not slow'            # the suite runs in every case
    apt = [line for line in lines if line.startswith('apt-get')]
    install = 'apt-get install -y -qq openssh-server pdsh'
    assert apt == {'present': [install], 'empty': [install, 'apt-get update -qq', install],
                   'unreachable': [install, 'apt-get update -qq']}[lists]
    assert ('could not install openssh-server and pdsh' in done.stderr) == (lists == 'unreachable')
