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
