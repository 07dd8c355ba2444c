"""A real two-host launch: two network namespaces joined by a veth pair, sshd in each, DeepSpeed's default (pdsh)
launcher starting one rank per host over SSH from a hostfile.

Nothing leaves the machine: the hosts' only addresses are on the veth pair (10.77.x.1 and 10.77.x.2), and everything
(namespaces, sshd, keys) is made in a temporary folder and torn down at the end. Needs root (``ip netns``), Debian's
openssh-server and pdsh (``.ci/run`` installs them).
"""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import launching
from launching import ROOT, TINY, assert_same_weights, client, run_id

pytestmark = pytest.mark.slow  # real multi-process launches: not in the fast lane

SSH_PORT = 2222
IFNAME = 'dvnet0'   # each host's one interface; gloo is told to use it (the hostname resolves to loopback)


def sh(*cmd, check=True, **kw):
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, **kw)


@pytest.fixture(scope='module')
def hosts(tmp_path_factory):
    missing = [tool for tool in ('ip', '/usr/sbin/sshd', 'pdsh', 'ssh', 'ssh-keygen') if shutil.which(tool) is None]
    launching.require_system(missing + ([] if os.geteuid() == 0 else ['root (ip netns)']), 'the two-host test')
    base = tmp_path_factory.mktemp('hosts')
    tag = f'dv{os.getpid() % 10000}'
    subnet = f'10.77.{os.getpid() % 250}'
    names = [f'{tag}h0', f'{tag}h1']
    addrs = [f'{subnet}.1', f'{subnet}.2']
    sh('ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', str(base / 'host_key'))
    sh('ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', str(base / 'user_key'))
    shutil.copy(base / 'user_key.pub', base / 'authorized_keys')
    os.makedirs('/run/sshd', exist_ok=True)   # sshd's privilege-separation directory
    sshds = []
    try:
        for name in names:
            sh('ip', 'netns', 'add', name)
        sh('ip', 'link', 'add', f'{tag}v0', 'type', 'veth', 'peer', 'name', f'{tag}v1')
        for k, (name, addr) in enumerate(zip(names, addrs)):
            sh('ip', 'link', 'set', f'{tag}v{k}', 'netns', name)
            sh('ip', '-n', name, 'link', 'set', f'{tag}v{k}', 'name', IFNAME)   # the same name on both hosts
            sh('ip', '-n', name, 'addr', 'add', f'{addr}/24', 'dev', IFNAME)
            sh('ip', '-n', name, 'link', 'set', IFNAME, 'up')
            sh('ip', '-n', name, 'link', 'set', 'lo', 'up')
            config = base / f'sshd_{k}.conf'
            config.write_text(textwrap.dedent(f'''\
                Port {SSH_PORT}
                ListenAddress {addr}
                HostKey {base / 'host_key'}
                AuthorizedKeysFile {base / 'authorized_keys'}
                PidFile {base / f'sshd_{k}.pid'}
                PermitRootLogin prohibit-password
                PasswordAuthentication no
                StrictModes no
                UsePAM no
                AcceptEnv *
                '''))
            sshds.append(subprocess.Popen(['ip', 'netns', 'exec', name, '/usr/sbin/sshd', '-D', '-e', '-f',
                                           str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        (base / 'ssh_config').write_text(textwrap.dedent(f'''\
            Host *
              Port {SSH_PORT}
              IdentityFile {base / 'user_key'}
              StrictHostKeyChecking no
              UserKnownHostsFile /dev/null
              LogLevel ERROR
              BatchMode yes
            '''))
        bindir = base / 'bin'   # `ssh` for DeepSpeed's reachability check and for pdsh: ours, with that config
        bindir.mkdir()
        (bindir / 'ssh').write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {base / "ssh_config"} "$@"\n')
        (bindir / 'ssh').chmod(0o755)
        deadline = time.time() + 30
        while sh('ip', 'netns', 'exec', names[0], str(bindir / 'ssh'), addrs[1], 'true', check=False).returncode:
            assert time.time() < deadline, 'sshd in the second host did not come up'
            time.sleep(0.3)
        yield {'base': base, 'names': names, 'addrs': addrs, 'bin': bindir}
    finally:
        for p in sshds:
            p.terminate()
        for name in names:
            for pid in sh('ip', 'netns', 'pids', name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sh('ip', 'netns', 'del', name, check=False)


def launch(hosts, env, out, *args):
    """The job as a user starts it on the first host: `deepspeed --hostfile` (pdsh over SSH) with one rank per host."""
    hostfile = hosts['base'] / 'hostfile'
    hostfile.write_text(''.join(f'{a} slots=1\n' for a in hosts['addrs']))
    ds_env = hosts['base'] / 'ds_env'   # what the remote host's shell needs beyond DeepSpeed's own exports
    ds_env.write_text(''.join(f'{k}={env[k]}\n' for k in ('DEEPVIT_DATA_CACHE', 'OMP_NUM_THREADS',
                                                           'TORCH_EXTENSIONS_DIR') if k in env)
                      + f'GLOO_SOCKET_IFNAME={IFNAME}\n')
    e = {**env, 'PATH': f"{hosts['bin']}:{env['PATH']}", 'DS_ENV_FILE': str(ds_env)}
    cmd = ['ip', 'netns', 'exec', hosts['names'][0], sys.executable, '-m', 'deepspeed.launcher.runner',
           '--hostfile', str(hostfile), '--master_addr', hosts['addrs'][0], '--master_port', '29533',
           str(ROOT / 'launch' / 'train.py'), '--deepspeed', str(ROOT / 'ds_configs' / 'zero2.json'),
           '--output-dir', str(out), '--experiment', 'launch-tests', *TINY, *args]
    log = open(Path(str(out) + '.log'), 'a')
    return subprocess.Popen(cmd, env=e, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


@pytest.fixture(scope='module')
def host_env(env):
    e = dict(env)
    e.setdefault('TORCH_EXTENSIONS_DIR', os.path.expanduser('~/.cache/torch_extensions'))
    return e


def test_two_hosts_over_ssh_train_like_one_host_with_two_ranks(hosts, host_env, reference, tmp_path):
    out = tmp_path / 'two-hosts'
    proc = launch(hosts, host_env, out)
    assert proc.wait(timeout=600) == 0, Path(str(out) + '.log').read_text()[-4000:]
    run = client(host_env).get_run(run_id(out))
    assert run.info.status == 'FINISHED' and run.data.params['world_size'] == '2'
    assert_same_weights(out, reference)


def test_losing_a_host_ends_the_other_and_the_run_resumes(hosts, host_env, reference, tmp_path):
    out = tmp_path / 'lost-host'
    proc = launch(hosts, host_env, out)
    deadline = time.time() + 300
    while not (out / 'checkpoints' / 'epoch0001').exists():
        assert proc.poll() is None and time.time() < deadline, Path(str(out) + '.log').read_text()[-3000:]
        time.sleep(0.2)
    time.sleep(1.0)  # inside epoch 2
    t0 = time.time()
    victims = [int(p) for p in sh('ip', 'netns', 'pids', hosts['names'][1]).stdout.split()]
    for pid in victims:  # every process on the second host (its rank, its sshd session, its sshd)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    code = proc.wait(timeout=180)
    ended = time.time() - t0
    assert code != 0 and ended < 120, f'the first host took {ended:.0f} s to end (exit {code})'
    rest = [p for p in sh('ip', 'netns', 'pids', hosts['names'][0]).stdout.split()
            if 'train.py' in Path(f'/proc/{p}/cmdline').read_text(errors='replace')] \
        if Path('/proc').exists() else []
    assert not rest, 'a rank of the first host is still running'
    # the second host comes back (its sshd) and the job resumes from the last complete checkpoint
    config = hosts['base'] / 'sshd_1.conf'
    sshd = subprocess.Popen(['ip', 'netns', 'exec', hosts['names'][1], '/usr/sbin/sshd', '-D', '-e', '-f',
                             str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while sh('ip', 'netns', 'exec', hosts['names'][0], str(hosts['bin'] / 'ssh'), hosts['addrs'][1], 'true',
                 check=False).returncode:
            assert time.time() < deadline
            time.sleep(0.3)
        again = launch(hosts, host_env, out, '--resume')
        assert again.wait(timeout=600) == 0, Path(str(out) + '.log').read_text()[-4000:]
    finally:
        sshd.terminate()
    assert '[deepvit] resumed from' in Path(str(out) + '.log').read_text()
    assert client(host_env).get_run(run_id(out)).info.status == 'FINISHED'
    assert_same_weights(out, reference)
