"""The same flags, the same checks, in minirun and minivm: names, hostnames, sizes, counts, -e,
a stop's grace. Each bad value is refused with one line and 125 before anything is made (no
record, no state directory, no lease on the bridge left by the refused command, no QEMU).

minivm's refusals come before it looks for a kernel, so these need no guest.
"""
import os
import subprocess
import sys

import pytest

from conftest import unheld_leases
from minirun import names
from minirun.errors import RuntimeFailure

LONG = "a" * 100

# (flags before the image, the message's words); each is tried with both programs.
BOTH = [
    (["--hostname", "ab\n6.6.6.6 web"], "invalid --hostname 'ab\\n6.6.6.6 web'"),
    (["--hostname", "a b"], "invalid --hostname 'a b'"),
    (["--hostname", "-bad"], "invalid --hostname '-bad'"),
    (["--hostname", "bad-"], "invalid --hostname 'bad-'"),
    (["--hostname", "a..b"], "invalid --hostname 'a..b'"),
    (["--hostname", "a_b"], "invalid --hostname 'a_b'"),
    (["--hostname", LONG], "100 characters, more than 64"),
    (["--cpus", "99"], f"--cpus 99 is more than the {os.cpu_count()} CPUs of this machine"),
    (["-e", ""], "invalid environment variable ''"),
    (["-e", "=x"], "invalid environment variable '=x'"),
    (["--memory", "100T"], "--memory 100T is more than this machine has"),
]
MINIRUN_ONLY = [
    (["--name", ""], "invalid container name ''"),
    (["--name", "a/b"], "invalid container name 'a/b'"),
    (["--name", "a" * 300], "invalid container name 'aaaaaaaaaaaaaaaaaaaa'...: 300 characters"),
    (["--add-host", "a\n6.6.6.6 web:10.0.0.5"], "invalid --add-host name 'a\\n6.6.6.6 web'"),
    (["--add-host", "a b:10.0.0.5"], "invalid --add-host name 'a b'"),
    (["--pids-limit", "99999999999999999999"],
     "invalid pids limit 99999999999999999999: give at most 4194304"),
    (["--memory", "1"], "--memory 1 is too little for a container: give at least 6M"),
]
MINIVM_ONLY = [
    (["-d", "--name", ""], "invalid VM name ''"),
    (["-d", "--name", "a/b"], "invalid VM name 'a/b'"),
    (["-d", "--name", "a" * 300], "invalid VM name 'aaaaaaaaaaaaaaaaaaaa'...: 300 characters"),
    (["-d", "--hostname", "x\n6.6.6.6 web2"], "invalid --hostname 'x\\n6.6.6.6 web2'"),
    (["--memory", "1"], "--memory 1 is too little for a guest: give at least 64M"),
    (["--name", "vm1"], "--name is for a detached VM: add -d"),
]


@pytest.fixture
def programs(minirun_env, tmp_path):
    """Run minirun run / minivm boot with FLAGS; check that nothing was made; the stderr."""
    vm_state = tmp_path / "vms"
    env = {**minirun_env, "MINIVM_STATE": str(vm_state), "MINIVM_KERNEL": "/nonexistent"}

    def refused(program, flags) -> str:
        command = ["run", "--rm"] if program == "minirun" else ["boot"]
        result = subprocess.run([sys.executable, "-m", program, *command, *flags, "hello", "true"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 125, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert os.listdir(minirun_env["MINIRUN_STATE"]) == []
        assert not vm_state.exists()
        assert unheld_leases() == []        # a lease its dead holder took (others' come and go)
        return result.stderr
    return refused


@pytest.mark.parametrize("program", ["minirun", "minivm"])
@pytest.mark.parametrize("flags, message", BOTH)
def test_both_refuse_the_same_bad_flag_in_one_line(programs, program, flags, message):
    assert message in programs(program, flags)


@pytest.mark.parametrize("flags, message", MINIRUN_ONLY)
def test_minirun_refuses_in_one_line(programs, flags, message):
    assert message in programs("minirun", flags)


@pytest.mark.parametrize("flags, message", MINIVM_ONLY)
def test_minivm_refuses_in_one_line(programs, flags, message):
    assert message in programs("minivm", flags)


@pytest.mark.parametrize("program", ["minirun", "minivm"])
def test_a_negative_grace_of_stop_is_one_line(minirun_env, tmp_path, program):
    env = {**minirun_env, "MINIVM_STATE": str(tmp_path / "vms")}
    result = subprocess.run([sys.executable, "-m", program, "stop", "-t", "-1", "web"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1, result.stderr
    assert "-1.0 is not in the range x>=0" in result.stderr


def test_good_names_pass_and_the_edges_are_where_the_rfc_and_the_kernel_put_them():
    for good in ["web", "db.example", "a", "x-1", "a" * 63,      # a label's most
                 ".".join(["a" * 31, "b" * 32])]:       # 64: HOST_NAME_MAX
        assert names.check_hostname(good) == good
    for bad in ["", "a" * 64, ".".join(["a" * 32, "b" * 32]), "a.", ".a", "é", "a\n"]:
        with pytest.raises(RuntimeFailure):
            names.check_hostname(bad)
    long_fqdn = ".".join(["a" * 60] * 4)    # 243 characters: an --add-host name, not sethostname'd
    assert names.check_hostname(long_fqdn, "--add-host name", names.DNS_NAME_MAX) == long_fqdn
    for good in ["my_app", "web-1", "a.b", "a" * 64]:
        assert names.check_name(good, "container") == good
    for bad in ["x", "_a", "a b", "a" * 65, "a\n"]:
        with pytest.raises(RuntimeFailure):
            names.check_name(bad, "container")


def test_a_good_hostname_and_add_host_reach_the_container(minirun):
    result = minirun("run", "--rm", "--hostname", "web-1.example", "--add-host",
                     "db.example:10.0.0.5", "hello", "sh", "-c", "hostname; grep db /etc/hosts")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "web-1.example\n10.0.0.5\tdb.example\n"
