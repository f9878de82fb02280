"""The accelerator: who runs the guest's instructions.

With KVM the host CPU runs guest code directly, in a hardware mode made for it (Intel VT-x, named
`vmx` in /proc/cpuinfo, or AMD-V, named `svm`), and the kernel module kvm_intel or kvm_amd traps
to QEMU only for what the hardware cannot do alone, such as device I/O. With TCG, QEMU's "Tiny Code
Generator", QEMU translates every guest instruction into host instructions in software: it works
anywhere, and is many times slower.

`/dev/kvm` existing is not enough to choose KVM. Some hosts (like the one this project is developed
on, itself a VM) expose a /dev/kvm backed by PVM, a paravirtualised KVM for guests built for it,
which hangs a standard kernel. So `auto` takes KVM only when the CPU flag, the module and a usable
/dev/kvm all say the host virtualises in hardware. See https://www.qemu.org/docs/master/system/
introduction.html#virtualisation-accelerators.
"""
import os
from dataclasses import dataclass
from pathlib import Path

from minirun.errors import RuntimeFailure

KVM_DEVICE = "/dev/kvm"
HARDWARE_FLAGS = {"vmx": "kvm_intel", "svm": "kvm_amd"}     # CPU flag -> the KVM module using it


@dataclass
class HostFacts:
    """What the host says about itself, read once; samples of it make the logic testable."""
    cpuinfo: str                # the text of /proc/cpuinfo
    modules: str                # the text of /proc/modules (one loaded module per line)
    kvm_device_usable: bool     # /dev/kvm can be opened for reading and writing

    @classmethod
    def read(cls) -> "HostFacts":
        modules = Path("/proc/modules")         # absent on a kernel built without modules
        return cls(cpuinfo=Path("/proc/cpuinfo").read_text(),
                   modules=modules.read_text() if modules.exists() else "",
                   kvm_device_usable=os.access(KVM_DEVICE, os.R_OK | os.W_OK))


@dataclass
class Accelerator:
    name: str           # "kvm" or "tcg"
    reason: str         # why it was chosen, for --verbose and --explain


def hardware_virtualisation(facts: HostFacts) -> str | None:
    """None if the host can run a standard guest under KVM, else what is missing."""
    flags = set()
    for line in facts.cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    loaded = {line.split()[0] for line in facts.modules.splitlines() if line.strip()}
    cpu_flag = next((flag for flag in HARDWARE_FLAGS if flag in flags), None)
    if cpu_flag is None:
        return "the CPU shows no vmx or svm flag in /proc/cpuinfo"
    if HARDWARE_FLAGS[cpu_flag] not in loaded:
        return f"the CPU has {cpu_flag} but the {HARDWARE_FLAGS[cpu_flag]} module is not loaded"
    if not facts.kvm_device_usable:
        return f"{KVM_DEVICE} cannot be opened for reading and writing"
    return None


def choose(requested: str, facts: HostFacts) -> Accelerator:
    """`auto`, `kvm` or `tcg` -> the accelerator to use, with the reason."""
    missing = hardware_virtualisation(facts)
    if requested == "tcg":
        return Accelerator("tcg", "TCG (software emulation), as asked by --accel tcg")
    if requested == "kvm":
        if not facts.kvm_device_usable:
            raise RuntimeFailure(f"--accel kvm: {KVM_DEVICE} cannot be opened for reading and "
                                 "writing; load kvm_intel or kvm_amd, or use --accel tcg")
        return Accelerator("kvm", "KVM, as asked by --accel kvm"
                           + (f" (warning: {missing})" if missing else ""))
    if missing is None:
        return Accelerator("kvm", "KVM: the CPU virtualises in hardware and /dev/kvm is usable")
    return Accelerator("tcg", f"TCG (software emulation): {missing}")
