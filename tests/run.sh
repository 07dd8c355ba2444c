#!/usr/bin/env bash
# The README's test command (and .ci/run's): the system tools the two-host test needs (tests/test_two_hosts.py:
# openssh-server and pdsh, installed when missing and apt-get is there to do it as root), then the whole suite.
# Extra arguments go to pytest, e.g.  bash tests/run.sh -m "not slow"  (the fast lane).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v pdsh >/dev/null || [ ! -x /usr/sbin/sshd ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        # a fresh container may have empty package lists: update them only when the install fails
        apt-get install -y -qq openssh-server pdsh >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq openssh-server pdsh >/dev/null; } \
            || echo "tests/run.sh: could not install openssh-server and pdsh with apt-get: the two-host test will" \
                    "skip (fail under DEEPVIT_REQUIRE_SYSTEM_TESTS=1)" >&2
    else
        echo "tests/run.sh: the two-host test needs openssh-server and pdsh (and root, for network namespaces):" \
             "install them, e.g. sudo apt-get install openssh-server pdsh" >&2
    fi
fi
exec python -m pytest -q "$@"
