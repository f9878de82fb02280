"""The default seccomp filter: what it refuses inside a real container, and that it is what does
the refusing (each refusal is checked again with `--security-opt seccomp=unconfined`)."""
import ctypes
import os
import re
import signal
import struct
from pathlib import Path

import pytest

from conftest import read_line, wait_for_container
from minirun import seccomp
from image_helpers import build_static, hello_with
from minirun.image import Store
from test_leftovers import host_mounts, leftovers

SOURCE = Path(__file__).parent / "programs" / "seccomp_probe.c"
UNCONFINED = ("--security-opt", "seccomp=unconfined")
KILLED_BY_SIGSYS = 128 + signal.SIGSYS


# -- The filter as data and as a program, without a kernel ----------------------------------------

def header_numbers(path: str) -> dict[str, int]:
    """The `#define __NR_name number` lines of a kernel header (the generic one also has a few
    `__NR3264_name`, the calls whose 32- and 64-bit versions differ)."""
    text = Path(path).read_text()
    return {name: int(number) for name, number in re.findall(r"#define __NR(?:3264)?_(\w+)\s+(\d+)\b", text)}


@pytest.mark.parametrize("column, header", [
    (0, "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
    (1, "/usr/include/asm-generic/unistd.h"),            # aarch64's table
])
def test_the_numbers_are_the_kernel_headers(column, header):
    if not Path(header).exists():
        pytest.fail(f"{header} is needed: apt-get install linux-libc-dev")
    known = header_numbers(header)
    for name, numbers in seccomp.NUMBERS.items():
        if numbers[column] is None:
            assert name not in known, name
        elif name in known:
            assert numbers[column] == known[name], name
        else:       # newer than the installed headers: numbered after the last call they know
            assert numbers[column] > max(known.values()), name


def test_every_refused_name_has_a_number_and_no_name_is_refused_twice():
    names = [name for names, _ in seccomp.REFUSED.values() for name in names]
    assert len(names) == len(set(names))
    assert all(seccomp.NUMBERS[name][0] is not None for name in names)


def test_audit_arch_values_are_the_headers():
    elf = Path("/usr/include/linux/elf-em.h").read_text()
    machine = {name: int(value) for name, value in re.findall(r"#define (EM_\w+)\s+(\d+)", elf)}
    native_64_bit_little_endian = 0x80000000 | 0x40000000     # __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
    assert seccomp.AUDIT_ARCH_X86_64 == machine["EM_X86_64"] | native_64_bit_little_endian
    assert seccomp.AUDIT_ARCH_AARCH64 == machine["EM_AARCH64"] | native_64_bit_little_endian


def run_filter(code: bytes, nr: int, arch: int = seccomp.AUDIT_ARCH_X86_64, arg0: int = 0) -> int:
    """The kernel's part, for the opcodes the filter uses: run it over one struct seccomp_data."""
    data = struct.pack("=IIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    pc, a = 0, 0
    while True:
        op, jt, jf, k = struct.unpack_from("=HBBI", code, 8 * pc)
        pc += 1
        if op == seccomp.LOAD:
            a = struct.unpack_from("=I", data, k)[0]
        elif op == seccomp.JEQ:
            pc += jt if a == k else jf
        elif op == seccomp.JSET:
            pc += jt if a & k else jf
        elif op == seccomp.RET:
            return k
        else:
            raise AssertionError(f"unexpected opcode {op:#x} at {pc - 1}")


@pytest.mark.parametrize("machine", sorted(seccomp.ARCHITECTURES))
def test_the_program_gives_each_call_its_verdict(machine):
    code = seccomp.assemble(seccomp.program(machine))
    arch, column = seccomp.ARCHITECTURES[machine]
    nr = {name: numbers[column] for name, numbers in seccomp.NUMBERS.items()}
    eperm, enosys = seccomp.ERRNO | 1, seccomp.ERRNO | 38
    for names, _ in seccomp.REFUSED.values():
        for name in names:
            if nr[name] is not None:
                assert run_filter(code, nr[name], arch) == eperm, name
    read, write = {"x86_64": (0, 1), "aarch64": (63, 64)}[machine]
    for allowed in (read, write, nr["seccomp"]):
        assert run_filter(code, allowed, arch) == seccomp.ALLOW
    assert run_filter(code, nr["clone"], arch, arg0=signal.SIGCHLD) == seccomp.ALLOW      # fork
    assert run_filter(code, nr["clone"], arch, arg0=0x3d0f00) == seccomp.ALLOW    # a thread
    assert run_filter(code, nr["clone"], arch, arg0=seccomp.CLONE_NEWUSER | signal.SIGCHLD) == eperm
    assert run_filter(code, nr["clone3"], arch) == enosys
    assert run_filter(code, nr["socket"], arch, arg0=2) == seccomp.ALLOW           # AF_INET
    assert run_filter(code, nr["socket"], arch, arg0=seccomp.AF_VSOCK) == eperm
    for persona in seccomp.PERSONALITIES:
        assert run_filter(code, nr["personality"], arch, arg0=persona) == seccomp.ALLOW
    assert run_filter(code, nr["personality"], arch, arg0=0x0040000) == eperm   # ADDR_NO_RANDOMIZE
    i386 = 0x40000003                                   # EM_386 | __AUDIT_ARCH_LE
    assert run_filter(code, read, i386) == seccomp.KILL_PROCESS
    if machine == "x86_64":
        assert run_filter(code, seccomp.X32_SYSCALL_BIT | read, arch) == seccomp.KILL_PROCESS


def test_the_assembler_resolves_labels_and_refuses_a_jump_out_of_reach():
    filler = [(seccomp.RET, 0)] * 255
    code = seccomp.assemble([(seccomp.JEQ, 7, "end", 0), *filler, "end", (seccomp.RET, 1)])
    assert struct.unpack_from("=HBBI", code, 0) == (seccomp.JEQ, 255, 0, 7)
    assert len(code) == 8 * 257
    with pytest.raises(ValueError, match="out of reach"):
        seccomp.assemble([(seccomp.JEQ, 7, "end", 0), *filler, (seccomp.RET, 0), "end",
                          (seccomp.RET, 1)])


# -- In real containers ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def probe_image(store_root, tmp_path_factory) -> str:
    """`hello` plus one layer holding a statically linked seccomp_probe."""
    binary = build_static(SOURCE, tmp_path_factory.mktemp("probe"), "-pthread")
    return hello_with(Store(store_root), binary, "seccomp-probe")


def probe(minirun, image, *calls, flags=()) -> dict[str, str]:
    """{call: "ok" or the errno's name}, from seccomp_probe in a container."""
    result = minirun("run", *flags, image, "seccomp_probe", *calls)
    assert result.returncode == 0, result.stderr
    return {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()}


@pytest.mark.parametrize("call, without_filter", [
    ("keyctl", "ok"),                   # the host root's user keyring: see the next test
    ("unshare", "ok"),                  # unshare(CLONE_NEWUSER): capabilities again, inside
    ("clone", "ok"),                    # clone(CLONE_NEWUSER), the same by the other door
    ("mount", "ENOENT"),                # the kernel looks up the target before the capability
    ("bpf", "EINVAL"),
    ("perf_event_open", "EFAULT"),
    ("userfaultfd", "ok"),
    ("io_uring_setup", "ok"),
    ("open_tree_attr", "ENOENT"),       # newer than libc's headers: the table has it anyway
    ("personality", "ok"),              # ADDR_NO_RANDOMIZE, which would turn off ASLR
    ("vsock", "ok"),                    # AF_VSOCK: not confined by the network namespace
])
def test_a_refused_call_fails_with_eperm_and_gets_through_unconfined(minirun, probe_image, call,
                                                                     without_filter):
    assert probe(minirun, probe_image, call) == {call: "EPERM"}
    assert probe(minirun, probe_image, call, flags=UNCONFINED) == {call: without_filter}


def test_without_the_filter_root_in_the_container_holds_the_host_roots_keyring(minirun, probe_image):
    libc = ctypes.CDLL(None, use_errno=True)
    keyctl, get_keyring_id, user_keyring = seccomp.NUMBERS["keyctl"][0], 0, -4
    host_keyring = libc.syscall(keyctl, get_keyring_id, user_keyring, 1)
    assert host_keyring > 0, os.strerror(ctypes.get_errno())
    result = minirun("run", *UNCONFINED, probe_image, "seccomp_probe", "keyctl")
    assert result.stdout == f"keyctl ok {host_keyring}\n"     # the same keyring: not namespaced


def test_clone3_is_enosys_so_that_threads_fall_back_to_clone(minirun, probe_image):
    assert probe(minirun, probe_image, "clone3", "thread", "fork") == \
        {"clone3": "ENOSYS", "thread": "ok", "fork": "ok"}
    assert probe(minirun, probe_image, "clone3", flags=UNCONFINED) == {"clone3": "ok"}


@pytest.mark.parametrize("call, without_filter", [
    ("x32", "ENOSYS"),                  # this kernel has no x32 ABI: the call does not exist
    ("int80", "ok"),                    # the i386 ABI does, with its own numbers
])
def test_a_call_from_another_abi_kills_the_process(minirun, probe_image, call, without_filter):
    result = minirun("run", probe_image, "seccomp_probe", "fork", call)
    assert result.returncode == KILLED_BY_SIGSYS, result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines()] == [["fork", "ok"]]  # then died
    assert probe(minirun, probe_image, call, flags=UNCONFINED) == {call: without_filter}


def test_every_refused_number_is_refused_by_the_kernel(minirun, probe_image):
    numbers = sorted({seccomp.NUMBERS[name][0] for names, _ in seccomp.REFUSED.values()
                      for name in names})
    verdicts = probe(minirun, probe_image, "nr", *map(str, numbers))
    assert verdicts == {str(number): "EPERM" for number in numbers}


def test_seccomp_mode_is_filter_by_default_and_off_when_unconfined(minirun):
    command = ("hello", "grep", "^Seccomp:", "/proc/self/status")
    assert minirun("run", *command).stdout == "Seccomp:\t2\n"           # SECCOMP_MODE_FILTER
    assert minirun("run", "-u", "nobody", *command).stdout == "Seccomp:\t2\n"  # after setuid too
    assert minirun("run", *UNCONFINED, *command).stdout == "Seccomp:\t0\n"


def test_with_init_both_init_and_command_are_filtered(minirun):
    result = minirun("run", "--init", "hello", "grep", "-h", "^Seccomp:", "/proc/1/status",
                     "/proc/self/status")
    assert result.stdout == "Seccomp:\t2\nSeccomp:\t2\n"


def test_ordinary_programs_still_work(minirun):
    script = ("ls / > /dev/null && echo piped | cat && (sleep 0.1; echo forked) & wait; "
              "mkdir /tmp/d && echo data > /tmp/d/f && cat /tmp/d/f; id -u; hostname")
    result = minirun("run", "--hostname", "box", "hello", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "piped\nforked\ndata\n0\nbox\n"


@pytest.mark.parametrize("flags, mode, keyctl", [((), "2", "EPERM"), (UNCONFINED, "0", "ok")])
def test_exec_into_a_running_container_gets_its_filter(minirun, start_minirun, minirun_env,
                                                       probe_image, flags, mode, keyctl):
    process = start_minirun("run", *flags, "--name", "filtered", probe_image, "sh", "-c",
                            "sleep 60 & echo ready; wait")
    assert read_line(process) == "ready\n"
    record = wait_for_container(minirun_env)
    try:
        status = minirun("exec", "filtered", "grep", "^Seccomp:", "/proc/self/status").stdout
        assert status == f"Seccomp:\t{mode}\n"
        assert minirun("exec", "filtered", "seccomp_probe", "keyctl").stdout.split()[:2] == \
            ["keyctl", keyctl]
    finally:
        os.kill(record["pid"], signal.SIGKILL)
        process.wait(timeout=20)


def test_explain_shows_what_the_filter_refuses(minirun):
    explained = minirun("run", "--explain", "hello", "true").stderr
    assert re.search(r"seccomp +filter of \d+ BPF instructions installed in [\d.]+ ms", explained)
    assert "EPERM keyrings: keyctl add_key request_key" in explained
    assert "clone3: ENOSYS" in explained
    assert "seccomp " not in minirun("run", "--explain", *UNCONFINED, "hello", "true").stderr


@pytest.mark.parametrize("option", ["seccomp=/etc/profile.json", "apparmor=unconfined", "seccomp"])
def test_a_bad_security_opt_is_one_line_125_and_leaves_nothing(minirun, minirun_env, option):
    def left():     # only what is this test's: other helpers' programs share /tmp and mounts
        store = minirun_env["MINIRUN_ROOT"]
        return ([mount for mount in host_mounts() if store in mount],
                {key: value for key, value in leftovers(minirun_env).items() if key != "tmp"})
    before = left()
    result = minirun("run", "--security-opt", option, "hello", "true")
    assert result.returncode == 125
    assert result.stderr == f"minirun: unsupported --security-opt {option!r}: minirun knows only " \
                            "seccomp=unconfined, which turns its system call filter off\n"
    assert left() == before
