"""The OCI runtime interface: how an engine (podman, containerd, CRI-O) drives minirun.

An engine does not run containers itself. It unpacks an image into a root filesystem, writes a
*bundle* (a directory holding `config.json`, which says everything about the container: the
process, its root, mounts, namespaces, limits, seccomp rules, hooks), and calls a low-level
runtime through five commands that the OCI runtime specification fixes (runtime.md):

    create ID --bundle DIR    set everything up; the process waits just before exec
    start ID                  let it exec the user's program
    state ID                  JSON: ociVersion, id, status (created|running|stopped), pid, bundle
    kill ID SIGNAL            signal the container's process
    delete ID                 remove what create made (the process must have stopped)

Between `create` and `start` the container's process is *there*, in its namespaces and cgroup,
its root changed, its privileges dropped, blocked opening a FIFO (`exec.fifo` in the state
directory): `start` opens the other end, and the open returns (fifo(7)), runc's design. So the
engine can do its work on a container that exists but runs nothing yet: join its network
namespace, write its pid file, run hooks.

This module reads config.json into a Plan (refusing, in one line naming it, every field it does
not carry out: nothing is silently ignored), makes the container from it (spawn.become:
the child's steps, in runc's order, the very ones `minirun run`'s container takes) and keeps
its state in $MINIRUN_STATE/oci/ID/ (or --root). The runtime process exits after each command:
the container's process is left to the engine's own supervisor (conmon, containerd-shim), a
subreaper that waits for it.
"""
import ctypes
import errno
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from minirun import (cgroups, container, devices, namespaces, rootfs, seccomp, security, spawn,
                     state, userns)
from minirun.errors import RUNTIME_FAILED, RuntimeFailure
from minirun.spawn import Process
from minirun.narrator import narrator
from minirun.namespaces import MS_BIND, MS_REC, mount

QUIET = narrator("minirun", False)     # no --explain for an engine's commands


# -- config.json in ------------------------------------------------------------------------------

class Fields:
    """A JSON object of config.json, read key by key; `done()` refuses any key not read that
    asks for something (a non-empty value): what minirun does not do, it says it does not."""

    def __init__(self, data, where: str):
        if not isinstance(data, dict):
            raise _invalid(where, "an object")
        self.data, self.where, self.read = data, where, set()

    def get(self, key: str, default=None, kind=None):
        self.read.add(key)
        value = self.data.get(key, default)
        if kind is not None and value is not None and not isinstance(value, kind):
            raise _invalid(f"{self.where}.{key}", kind.__name__ if isinstance(kind, type) else "a value")
        return value

    def sub(self, key: str) -> "Fields":
        return Fields(self.get(key) or {}, f"{self.where}.{key}")

    def done(self) -> None:
        for key, value in self.data.items():
            if key not in self.read and value not in (None, "", [], {}):
                refuse(f"{self.where}.{key}")


def refuse(where: str, why: str = "") -> None:
    raise RuntimeFailure(f"config.json: {where} is not supported by minirun"
                         + (f" ({why})" if why else "") + ": remove it from the bundle")


def _invalid(where: str, kind: str) -> RuntimeFailure:
    return RuntimeFailure(f"config.json: {where} must be {kind}")


@dataclass(kw_only=True)
class Plan(spawn.Config):
    """A bundle's config.json, read: the container itself (spawn.Config, what the child
    becomes, as `run`'s does), and what the runtime does for it on the host."""
    id: str
    bundle: Path
    limits: cgroups.Limits
    device_rules: tuple | None                  # None: every device (an "allow all" list)
    cgroups_path: str
    hooks: dict[str, list[dict]]
    annotations: dict[str, str]


def load(bundle: Path, container_id: str) -> Plan:
    """Read BUNDLE/config.json into a Plan, checking all of it before anything is made."""
    try:
        config = json.loads((bundle / "config.json").read_text())
    except FileNotFoundError:
        raise RuntimeFailure(f"no config.json in the bundle {bundle}: give the bundle "
                             "directory with --bundle") from None
    except (OSError, ValueError) as error:
        raise RuntimeFailure(f"cannot read {bundle / 'config.json'}: {error}") from None
    top = Fields(config, "config")
    version = top.get("ociVersion", "", str)
    if not version.startswith("1."):
        raise RuntimeFailure(f"config.json: ociVersion {version!r}: minirun speaks 1.x")
    root = top.sub("root")
    root_path = bundle / root.get("path", "rootfs", str)
    read_only = bool(root.get("readonly", False, bool))
    root.done()
    if not root_path.is_dir():
        raise RuntimeFailure(f"config.json: root.path {root_path} is not a directory")
    process = parse_process(top.get("process"), "process")
    linux = top.sub("linux")
    plan = Plan(
        id=container_id, bundle=bundle, root=root_path, read_only=read_only, process=process,
        hostname=top.get("hostname", None, str),
        mounts=[_mount(item, f"mounts[{index}]", bundle)
                for index, item in enumerate(top.get("mounts", [], list))],
        namespaces=_namespaces(linux.get("namespaces", [], list)),
        limits=cgroups.Limits(), device_rules=devices.DEFAULT_RULES,
        cgroups_path=_cgroups_path(linux.get("cgroupsPath", "", str), container_id),
        seccomp=None,
        masked=linux.get("maskedPaths", [], list), read_only_paths=linux.get("readonlyPaths", [], list),
        sysctl=linux.get("sysctl", {}, dict), hooks={}, annotations=top.get("annotations", {}, dict))
    plan.limits, plan.device_rules = _resources(linux.sub("resources"))
    plan.devices = [_device(item, f"linux.devices[{index}]")
                    for index, item in enumerate(linux.get("devices", [], list))]
    if linux.get("seccomp"):
        plan.seccomp = seccomp_program(linux.sub("seccomp"))
    if linux.get("rootfsPropagation", "rprivate") not in ("private", "rprivate"):
        refuse("linux.rootfsPropagation", "only private and rprivate")
    plan.uid_map = _mappings(linux.get("uidMappings", [], list), "linux.uidMappings")
    plan.gid_map = _mappings(linux.get("gidMappings", [], list), "linux.gidMappings")
    _check_user_namespace(plan)
    for key in linux.data.get("sysctl") or {}:
        if not key.startswith(NAMESPACED_SYSCTLS):
            refuse(f"linux.sysctl.{key}", "only sysctls of the container's own namespaces: "
                   + ", ".join(NAMESPACED_SYSCTLS))
    linux.done()
    hooks = top.sub("hooks")
    for kind in ("prestart", "createRuntime", "poststart", "poststop"):
        plan.hooks[kind] = [_hook(hook, f"hooks.{kind}") for hook in hooks.get(kind, [], list)]
    hooks.done()
    if plan.hostname and "uts" not in plan.namespaces:
        refuse("hostname", "without a uts namespace it would be the host's")
    top.done()
    return plan


NAMESPACED_SYSCTLS = ("net.", "kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue.")


def _mappings(items: list, where: str) -> list[userns.Mapping]:
    mappings = []
    for index, item in enumerate(items):
        fields = Fields(item, f"{where}[{index}]")
        mappings.append(userns.Mapping(fields.get("containerID", -1, int),
                                       fields.get("hostID", -1, int), fields.get("size", 0, int)))
        fields.done()
    userns.check(mappings, where)
    return mappings


def _check_user_namespace(plan: Plan) -> None:
    """Mappings go with a new user namespace, and only with one (a joined namespace has its
    own); the process's IDs must be mapped, or it could not become them."""
    if "user" not in plan.namespaces:
        for where, mappings in (("uidMappings", plan.uid_map), ("gidMappings", plan.gid_map)):
            if mappings:
                raise RuntimeFailure(f"config.json: linux.{where} without a user namespace: add "
                                     '{"type": "user"} to linux.namespaces, or remove them')
        return
    for where, mappings in (("uidMappings", plan.uid_map), ("gidMappings", plan.gid_map)):
        if plan.namespaces["user"] and mappings:
            raise RuntimeFailure(f"config.json: linux.{where} with a user namespace path: the "
                                 "joined namespace has its own: remove them")
        if not plan.namespaces["user"] and not mappings:
            raise RuntimeFailure(f"config.json: linux.{where} is missing or empty: a new user "
                                 "namespace needs uidMappings and gidMappings (containerID, "
                                 "hostID, size)")
    if plan.namespaces["user"]:
        return
    user = plan.process
    for where, mappings, ids in (("uid", plan.uid_map, (0, user.uid)),
                                 ("gid", plan.gid_map, (0, user.gid, *user.groups))):
        for inside in ids:
            if userns.host_id(mappings, inside) is None:
                raise RuntimeFailure(
                    f"config.json: linux.{where}Mappings does not map {where} {inside}"
                    + (" (the container's root, which sets it up)" if inside == 0 else
                       " (process.user's)") + ": add it to the mappings")
    blocked = userns.blocked_on_the_way(plan.root, plan.uid_map, plan.gid_map)
    if blocked:
        raise RuntimeFailure(f"config.json: root.path: the container's root (host uid "
                             f"{userns.host_id(plan.uid_map, 0)}) may not pass through {blocked}: "
                             f"with a user namespace, let it (chmod o+x {blocked})")


def parse_process(data, where: str) -> Process:
    """config.json's `process`, or an `exec --process` file (the same object)."""
    fields = Fields(data or {}, where)
    args = fields.get("args", [], list)
    if not args or not all(isinstance(arg, str) for arg in args) or not args[0]:
        raise _invalid(f"{where}.args", "a non-empty list of strings")
    env = {}
    for item in fields.get("env", [], list):
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise _invalid(f"{where}.env", f"KEY=VALUE strings, not {item!r}")
        env[key] = value
    cwd = fields.get("cwd", "/", str)
    if not cwd.startswith("/"):
        raise _invalid(f"{where}.cwd", "an absolute path")
    user = fields.sub("user")
    process = Process(args=args, env=env, cwd=cwd, uid=user.get("uid", 0, int),
                      gid=user.get("gid", 0, int),
                      groups=list(user.get("additionalGids", [], list)),
                      umask=user.get("umask", None, int),
                      terminal=bool(fields.get("terminal", False, bool)),
                      no_new_privileges=bool(fields.get("noNewPrivileges", False, bool)),
                      oom_score_adj=fields.get("oomScoreAdj", None, int))
    user.done()
    capabilities = fields.sub("capabilities")
    for kind in ("bounding", "effective", "permitted", "inheritable", "ambient"):
        process.capabilities[kind] = frozenset(
            _capability(name, f"{where}.capabilities.{kind}")
            for name in capabilities.get(kind, [], list))
    capabilities.done()
    if not process.capabilities["effective"] <= process.capabilities["permitted"] | {"*"}:
        raise _invalid(f"{where}.capabilities.effective", "a subset of permitted")
    for index, limit in enumerate(fields.get("rlimits", [], list)):
        item = Fields(limit, f"{where}.rlimits[{index}]")
        name = item.get("type", "", str)
        number = getattr(resource, name, None)
        if not name.startswith("RLIMIT_") or number is None:
            raise _invalid(f"{where}.rlimits[{index}].type", "an RLIMIT_ name of setrlimit(2)")
        process.rlimits.append((number, item.get("soft", 0, int), item.get("hard", 0, int)))
        item.done()
    size = fields.sub("consoleSize")
    if size.data:
        process.console_size = (size.get("height", 0, int), size.get("width", 0, int))
    size.done()
    fields.done()
    return process


def _capability(name: str, where: str) -> str:
    short = name.lower().removeprefix("cap_") if isinstance(name, str) else ""
    if short not in security.ALL_CAPABILITIES:
        raise _invalid(where, f"capability names of capabilities(7), not {name!r}")
    return short


MOUNT_TYPES = ("bind", "proc", "tmpfs", "devpts", "mqueue", "sysfs", "cgroup", "cgroup2", "shm")


def _mount(data, where: str, bundle: Path) -> rootfs.Mount:
    fields = Fields(data, where)
    destination = fields.get("destination", "", str)
    if not destination.startswith("/") or ".." in destination.split("/"):
        raise _invalid(f"{where}.destination", "an absolute path without '..'")
    flags, propagation, extra, copy_up = 0, 0, [], False
    for option in fields.get("options", [], list):
        if option == "tmpcopyup":
            copy_up = True
        elif option in rootfs.MOUNT_FLAGS:
            bit, on = rootfs.MOUNT_FLAGS[option]
            flags = flags | bit if on else flags & ~bit
        elif option.removeprefix("r") in rootfs.PROPAGATION:
            propagation = rootfs.PROPAGATION[option.removeprefix("r")] | (MS_REC if option[0] == "r" else 0)
        else:
            extra.append(option)
    kind = fields.get("type", "bind" if flags & MS_BIND else "", str)
    if kind not in MOUNT_TYPES:
        refuse(f"{where}.type {kind!r}", "minirun mounts " + ", ".join(MOUNT_TYPES))
    if kind == "bind":
        flags |= MS_BIND
    if copy_up and kind != "tmpfs":
        refuse(f"{where}.options tmpcopyup", "only a tmpfs is filled from the image")
    source = fields.get("source", kind, str)
    if flags & MS_BIND:
        if extra:
            refuse(f"{where}.options {extra}", "a bind mount takes flags only")
        source = str(bundle / source) if not source.startswith("/") else source
        if not os.path.exists(source):
            raise RuntimeFailure(f"config.json: {where}.source {source} does not exist")
    fields.done()
    return rootfs.Mount(destination, kind, source, flags, propagation, ",".join(extra), copy_up)


def _namespaces(items: list) -> dict[str, str | None]:
    chosen = {}
    for index, item in enumerate(items):
        fields = Fields(item, f"linux.namespaces[{index}]")
        kind, path = fields.get("type", "", str), fields.get("path", None, str)
        fields.done()
        if kind not in namespaces.BY_TYPE:
            refuse(f"linux.namespaces type {kind!r}", "minirun knows " + ", ".join(namespaces.BY_TYPE))
        if kind == "mount" and path:
            refuse("linux.namespaces mount path", "the container's mounts are its own")
        if path and not os.path.exists(path):
            raise RuntimeFailure(f"config.json: linux.namespaces {kind} path {path} does not exist")
        chosen[kind] = path or None
    if "mount" not in chosen:
        refuse("a bundle without a mount namespace", "pivot_root needs one")
    return chosen


def _cgroups_path(path: str, container_id: str) -> str:
    """Where the container's cgroup goes in each hierarchy. An absolute path is the engine's
    choice (/libpod_parent/libpod-ID), used as given; a relative one, or none, goes under
    minirun's own parent, never under the cgroup minirun was started in (runc resolves it
    there; every shell on some hosts runs in a job's cgroup that must not be touched).
    A path inside the caller's own cgroup is refused for the same reason."""
    if not path:
        return f"/{cgroups.PARENT}/{container_id}"
    if ".." in path.split("/"):
        raise _invalid("linux.cgroupsPath", "a path without '..'")
    if not path.startswith("/"):
        return f"/{cgroups.PARENT}/{path}"
    with open("/proc/self/cgroup") as own:
        mine = {line.strip().split(":", 2)[2] for line in own} - {"/"}
    if any(path == cgroup or path.startswith(cgroup.rstrip("/") + "/") for cgroup in mine):
        raise RuntimeFailure(f"config.json: linux.cgroupsPath {path} is inside minirun's own "
                             "cgroup: give a path of its own, or a relative one")
    return path


def _resources(fields: Fields) -> tuple[cgroups.Limits, tuple]:
    memory = fields.sub("memory")
    limit = memory.get("limit", None, int)
    swap = memory.get("swap", None, int)            # memory + swap (-1: no limit)
    if swap is not None and swap != -1 and (not limit or limit < 0 or swap < limit):
        raise _invalid("linux.resources.memory.swap", "at least memory.limit, with a limit")
    memory.done()
    cpu = fields.sub("cpu")
    quota, period = cpu.get("quota", None, int), cpu.get("period", None, int)
    cpu.done()
    pids = fields.sub("pids")
    pid_limit = pids.get("limit", None, int)
    pids.done()
    rules = _device_rules(fields.get("devices", [], list))
    fields.done()
    cpus = quota / (period or cgroups.CPU_PERIOD_US) if quota and quota > 0 else None
    return cgroups.Limits(memory=limit if limit and limit > 0 else None, cpus=cpus,
                          pids=pid_limit if pid_limit and pid_limit > 0 else None,
                          swap=swap if swap and swap > 0 and limit and limit > 0 else None), rules


def _device_rules(items: list) -> tuple | None:
    """linux.resources.devices: the engine's rules, then the devices every container has
    (runc's list, devices.DEFAULT_RULES), as runc adds them. Only the shapes engines send are
    taken: "deny all" first, then allow rules; or one "allow all" (a privileged container, as
    `podman run --privileged` asks): None, no device list at all."""
    if not items:
        return devices.DEFAULT_RULES
    if len(items) == 1 and items[0] in ({"allow": True, "access": "rwm"},
                                        {"allow": True, "type": "a", "access": "rwm"}):
        return None
    first = Fields(items[0], "linux.resources.devices[0]")
    if first.get("allow") is not False or first.get("access", "rwm") != "rwm" \
            or first.get("type", "a") != "a" or first.get("major") is not None \
            or first.get("minor") is not None:
        refuse("linux.resources.devices", "the list must start with a deny-all rule")
    first.done()
    rules = []
    for index, item in enumerate(items[1:], 1):
        fields = Fields(item, f"linux.resources.devices[{index}]")
        if fields.get("allow") is not True or fields.get("type") not in ("c", "b"):
            refuse(f"linux.resources.devices[{index}]", "after deny-all, only c or b allow rules")
        rules.append(devices.Rule(item["type"], fields.get("major", None, int),
                                  fields.get("minor", None, int), fields.get("access", "rwm", str),
                                  "config.json"))
        fields.done()
    return tuple(rules) + devices.DEFAULT_RULES


def _device(data, where: str) -> rootfs.Device:
    """linux.devices[i]: a node to make in the container (config-linux.md "Devices")."""
    fields = Fields(data, where)
    path, kind = fields.get("path", "", str), fields.get("type", "", str)
    if not path.startswith("/"):
        raise _invalid(f"{where}.path", "an absolute path")
    if kind not in rootfs.NODE_TYPES:
        raise _invalid(f"{where}.type", "c, b, u or p")
    device = rootfs.Device(path, kind, fields.get("major", 0, int), fields.get("minor", 0, int),
                           fields.get("fileMode", 0o666, int), fields.get("uid", 0, int),
                           fields.get("gid", 0, int))
    fields.done()
    return device


def _hook(data, where: str) -> dict:
    fields = Fields(data, where)
    hook = {"path": fields.get("path", "", str), "args": fields.get("args", [], list),
            "env": fields.get("env", [], list), "timeout": fields.get("timeout", None, int)}
    fields.done()
    if not hook["path"].startswith("/"):
        raise _invalid(f"{where}.path", "an absolute path")
    return hook


# -- The spec's seccomp rules, on seccomp.py's assembler -----------------------------------------

ACTIONS = {"SCMP_ACT_KILL": 0, "SCMP_ACT_KILL_THREAD": 0,
           "SCMP_ACT_KILL_PROCESS": seccomp.KILL_PROCESS, "SCMP_ACT_TRAP": 0x00030000,
           "SCMP_ACT_ERRNO": seccomp.ERRNO, "SCMP_ACT_TRACE": 0x7FF00000,
           "SCMP_ACT_LOG": 0x7FFC0000, "SCMP_ACT_ALLOW": seccomp.ALLOW}
# When two rules match one call, libseccomp takes the most restrictive action; checking rules
# in that order, first match wins, gives the same answer.
SEVERITY = ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
            "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_LOG", "SCMP_ACT_ALLOW"]
ALU_AND = 0x54          # BPF_ALU | BPF_AND | BPF_K: A &= k
JGT, JGE = 0x25, 0x35   # BPF_JMP | BPF_JGT / BPF_JGE | BPF_K


def seccomp_program(fields: Fields) -> bytes:
    """linux.seccomp → a classic BPF program for seccomp.py's assembler: for each rule, in
    order of severity, "if the call is NR (and its arguments match), return the action";
    at the end the default action. Calls of another ABI than this machine's are killed, as
    minirun's default filter does (the profile's `architectures` name them, but their numbers
    differ, and this builder knows the native ones only)."""
    default = _action(fields.get("defaultAction", "", str), fields.get("defaultErrnoRet", None, int),
                      "linux.seccomp.defaultAction")
    fields.get("architectures")
    arch, _ = seccomp.ARCHITECTURES[seccomp.MACHINE]
    rules = fields.get("syscalls", [], list)
    fields.done()
    ordered = sorted(enumerate(rules), key=lambda pair: SEVERITY.index(pair[1].get("action"))
                     if pair[1].get("action") in SEVERITY else 0)
    kill = (seccomp.RET, seccomp.KILL_PROCESS)      # near: a jump reaches 255 instructions
    source = [(seccomp.LOAD, seccomp.ARCH), (seccomp.JEQ, arch, "native", 0), kill, "native",
              (seccomp.LOAD, seccomp.NR)]
    if seccomp.MACHINE == "x86_64":
        source += [(seccomp.JSET, seccomp.X32_SYSCALL_BIT, 0, "x86_64"), kill, "x86_64"]
    for index, rule in ordered:
        where = f"linux.seccomp.syscalls[{index}]"
        item = Fields(rule, where)
        action = _action(item.get("action", "", str), item.get("errnoRet", None, int), where)
        conditions = [_condition(arg, f"{where}.args[{n}]")
                      for n, arg in enumerate(item.get("args", [], list))]
        for name in item.get("names", [], list):
            number = _syscall_number(name)
            if number is None:
                continue                    # not a call of this architecture
            label = f"next{len(source)}"
            source.append((seccomp.JEQ, number, 0, label))
            for condition in conditions:
                source.extend(condition(label))
            source += [(seccomp.RET, action), label]
            if conditions:
                source.append((seccomp.LOAD, seccomp.NR))
        item.done()
    source.append((seccomp.RET, default))
    return seccomp.assemble(source)


def _action(name: str, errno_ret: int | None, where: str) -> int:
    if name not in ACTIONS:
        refuse(f"{where} {name!r}", "actions: " + ", ".join(ACTIONS))
    if name == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO | (errno.EPERM if errno_ret is None else errno_ret)
    return ACTIONS[name] | (errno_ret or 0 if name == "SCMP_ACT_TRACE" else 0)


def _condition(data, where: str):
    """One of a rule's argument checks, as instructions that jump to `fail` if it does not
    hold. Arguments are 64 bits; classic BPF loads 32 at a time (low word first, little-endian)."""
    fields = Fields(data, where)
    index, value = fields.get("index", 0, int), fields.get("value", 0, int)
    second, op = fields.get("valueTwo", 0, int), fields.get("op", "", str)
    fields.done()
    low, high = 16 + 8 * index, 20 + 8 * index       # offsetof(struct seccomp_data, args[i])
    split = lambda number: (number & 0xFFFFFFFF, number >> 32)   # noqa: E731
    if op == "SCMP_CMP_EQ":
        (v_low, v_high) = split(value)
        return lambda fail: [(seccomp.LOAD, high), (seccomp.JEQ, v_high, 0, fail),
                             (seccomp.LOAD, low), (seccomp.JEQ, v_low, 0, fail)]
    if op == "SCMP_CMP_NE":
        (v_low, v_high) = split(value)
        return lambda fail: [(seccomp.LOAD, high), (seccomp.JEQ, v_high, 0, f"ne{fail}{index}"),
                             (seccomp.LOAD, low), (seccomp.JEQ, v_low, fail, 0), f"ne{fail}{index}"]
    if op == "SCMP_CMP_MASKED_EQ":
        (m_low, m_high), (v_low, v_high) = split(value), split(second)
        return lambda fail: [(seccomp.LOAD, high), (ALU_AND, m_high), (seccomp.JEQ, v_high, 0, fail),
                             (seccomp.LOAD, low), (ALU_AND, m_low), (seccomp.JEQ, v_low, 0, fail)]
    refuse(f"{where}.op {op!r}", "minirun compares with SCMP_CMP_EQ, SCMP_CMP_NE and "
           "SCMP_CMP_MASKED_EQ")


def _syscall_number(name: str) -> int | None:
    """The number of system call `name` on this machine, from libseccomp's table (the one
    every runtime uses); None if this architecture has no such call."""
    global _libseccomp
    if _libseccomp is None:
        try:
            _libseccomp = ctypes.CDLL("libseccomp.so.2")
        except OSError:
            raise RuntimeFailure("linux.seccomp needs libseccomp.so.2 for the system call "
                                 "numbers: apt-get install libseccomp2") from None
        _libseccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    number = _libseccomp.seccomp_syscall_resolve_name(name.encode())
    return number if number >= 0 else None


_libseccomp = None


# -- create: the container, waiting -----------------------------------------------------------

def state_root(root: str | None = None) -> Path:
    return Path(root) if root else state.state_dir() / "oci"


def create(container_id: str, bundle: str, pid_file: str | None, console_socket: str | None,
           root: str | None = None) -> None:
    """`minirun create`: make the container and leave its process waiting before exec."""
    if not container_id or "/" in container_id or container_id.startswith("."):
        raise RuntimeFailure(f"invalid container id {container_id!r}")
    bundle_path = Path(bundle or ".").resolve()
    plan = load(bundle_path, container_id)
    if plan.process.terminal and not console_socket:
        raise RuntimeFailure("process.terminal is true: give --console-socket, where minirun "
                             "sends the pty's master end")
    home = state_root(root) / container_id
    for attempt in range(3):        # a `delete` may remove the root between the two mkdirs
        home.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            home.mkdir(mode=0o700)
            break
        except FileExistsError:
            raise RuntimeFailure(f"container {container_id} exists already: `minirun delete` "
                                 "it first") from None
        except FileNotFoundError:
            if attempt == 2:
                raise
    cgroup = child = console = None
    try:
        fifo = home / "exec.fifo"
        os.mkfifo(fifo)
        os.chmod(fifo, 0o622)           # writable by the container's user, whoever it is
        fifo_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)
        if console_socket:
            console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            console.connect(console_socket)
        cgroup = cgroups.create(container_id, plan.limits, plan.device_rules is None,
                                plan.cgroups_path, plan.device_rules or devices.DEFAULT_RULES)
        # With a user namespace the child makes the PID namespace itself, from inside it
        # (_enter_user_namespace), and the runtime writes its maps meanwhile.
        handshake = userns.Handshake(plan.uid_map, plan.gid_map) \
            if "user" in plan.namespaces else None

        def become(link) -> None:
            """In the child: the container, made from the bundle as `run`'s is from its plan."""
            link.console = console      # the engine's --console-socket, for the pty's master end
            spawn.become(plan, cgroup, link, QUIET, lambda: _bind_root(plan.root),
                         enter_user_namespace=(lambda: _enter_user_namespace(
                             plan, link, handshake)) if handshake else None,
                         gate=lambda: _wait_at_the_fifo(plan.process, link, fifo_fd),
                         outlives_runtime=True)

        child, _ = spawn.fork(
            (lambda: None) if handshake else lambda: _enter_pid_namespace(plan.namespaces),
            become,
            False, "creating the container failed", plan.process.args, plan.process.env,
            after_go=handshake.write_maps if handshake and plan.uid_map else None)
        if handshake:
            os.waitpid(child, 0)        # the first child, done once it forked the container's
            child = handshake.container_pid()
        record = {"id": container_id, "pid": child, "pid_start": state.start_time(child),
                  "bundle": str(bundle_path), "created": time.time(),
                  "annotations": plan.annotations, "cgroups_path": plan.cgroups_path,
                  "hooks": plan.hooks}
        (home / "state.json").write_text(json.dumps(record))
        if pid_file:
            _write_pid_file(pid_file, child)
        for hook in plan.hooks["prestart"] + plan.hooks["createRuntime"]:
            _run_hook(hook, state_of(container_id, root), must_succeed=True)
    except BaseException:
        if child:
            _kill(child)
        if cgroup:
            cgroup.remove()
        _remove_state(home)
        raise
    finally:
        if console:
            console.close()


def _remove_state(home: Path) -> None:
    """A container's state directory, and the root above it once empty (`create` makes it
    again when needed)."""
    shutil.rmtree(home, ignore_errors=True)
    try:
        home.parent.rmdir()
    except OSError:
        pass


def _enter_pid_namespace(chosen: dict) -> None:
    if "pid" not in chosen:
        return                                  # the host's PID namespace, as asked
    if chosen["pid"]:
        namespaces.join(chosen["pid"], namespaces.CLONE_NEWPID)
    else:
        namespaces.unshare(namespaces.CLONE_NEWPID)


def _bind_root(root: Path) -> None:
    """An engine's root is a directory (it has mounted the image's layers itself, before
    `create`); pivot_root wants a mount point: a bind mount of the directory on itself."""
    mount(str(root), str(root), None, MS_BIND | MS_REC)


def _enter_user_namespace(plan: Plan, link, handshake: userns.Handshake) -> None:
    """In the child, for a bundle with a user namespace: enter it, then fork the process that
    will be the container's, and leave (the runtime records the grandchild: runc's way too).

    Order matters: a namespace belongs to the user namespace its creator was in
    (user_namespaces(7), "Interaction of user namespaces and other types of namespaces"), and
    the container's root may mount /proc only for a PID namespace its user namespace owns,
    sysfs only for a network namespace it owns. So the user namespace comes first, the others
    after it; and as unshare(CLONE_NEWPID) makes a namespace for the caller's *children*
    (pid_namespaces(7)), the container's process must be a child forked from in here."""
    os.close(handshake.read)
    if plan.namespaces["user"]:
        namespaces.join(plan.namespaces["user"], namespaces.CLONE_NEWUSER)
    else:
        namespaces.unshare(namespaces.CLONE_NEWUSER)
        handshake.ask_for_maps(link)            # the runtime writes them (userns.py)
    userns.become_root()
    security.die_with_parent()      # again: a change of IDs clears it (prctl(2))
    if link.runtime_is_gone():
        os._exit(RUNTIME_FAILED)
    _enter_pid_namespace(plan.namespaces)
    pid = os.fork()
    if pid:                 # its PID here is its host PID: we are in the runtime's namespace
        handshake.tell(pid)
        _stand_by(pid, link)
        os._exit(0)
    os.close(handshake.write)
    security.die_with_parent()      # our parent lives as long as the runtime does (_stand_by)
    if link.runtime_is_gone():
        os._exit(RUNTIME_FAILED)


def _stand_by(child: int, link) -> None:
    """The first child, once it forked the container's process: stay its parent, so that a
    runtime killed during the setup takes both along (parent-death signals, one each), until
    the runtime lets go (it closes `go` once the container waits at the FIFO) or the child
    has ended (it failed: reaped here, and the runtime reads why on the error pipe)."""
    import select
    os.close(link.errors)
    ended = os.pidfd_open(child)
    poller = select.poll()
    poller.register(ended, select.POLLIN)
    poller.register(link.go, select.POLLIN)
    if any(fd == ended for fd, _ in poller.poll()):
        os.waitpid(child, 0)


def _wait_at_the_fifo(process: Process, link, fifo_fd: int) -> None:
    """`create`'s start gate (spawn.last_steps): the process is ready. EOF on the errors pipe tells `create` so, and it
    exits; then the process waits for `start`: open(2) of a FIFO for writing blocks until it
    has a reader (fifo(7)), runc's design. The command is looked up first, so that `create`,
    not a silent exit after `start`, says it is missing, as runc does."""
    if not _findable(process.args[0], process.env):
        raise spawn.exec_failure(process.args, process.env, errno.ENOENT)
    os.close(link.errors)
    link.errors = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        fifo = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
        os.write(fifo, b"0")
        os.close(fifo)
    except OSError as error:    # `create` has gone: the engine reads the container's stderr
        os.write(2, f"minirun: starting the container failed: {error}\n".encode())
        os._exit(RUNTIME_FAILED)


def _findable(program: str, env: dict) -> bool:
    """Whether execvpe will find `program`."""
    if "/" in program:
        return os.path.exists(program)
    return any(os.path.exists(os.path.join(directory or ".", program))
               for directory in env.get("PATH", os.defpath).split(":"))



def _write_pid_file(path: str, pid: int) -> None:
    state.write_atomically(Path(path), str(pid).encode())     # an engine may be reading it


# -- start, state, kill, delete ----------------------------------------------------------------

def _record(container_id: str, root: str | None) -> dict:
    try:
        return json.loads((state_root(root) / container_id / "state.json").read_text())
    except (OSError, ValueError):
        raise RuntimeFailure(f"container {container_id} does not exist") from None


def exists(container_id: str, root: str | None = None) -> bool:
    return (state_root(root) / container_id / "state.json").exists()


def _alive(record: dict) -> bool:
    """Whether the container's process runs: its PID with its start time, and not a zombie
    (which only its parent, the engine's subreaper, may reap)."""
    try:
        with open(f"/proc/{record['pid']}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return int(fields[19]) == record["pid_start"] and fields[0] != "Z"


def status(container_id: str, root: str | None = None) -> str:
    record = _record(container_id, root)
    if not _alive(record):
        return "stopped"
    return "created" if (state_root(root) / container_id / "exec.fifo").exists() else "running"


def state_of(container_id: str, root: str | None = None) -> dict:
    """The spec's state (runtime.md, "State")."""
    record = _record(container_id, root)
    current = status(container_id, root)
    return {"ociVersion": spawn.OCI_VERSION, "id": container_id, "status": current,
            "pid": record["pid"] if current != "stopped" else 0, "bundle": record["bundle"],
            "annotations": record.get("annotations", {})}


def start(container_id: str, root: str | None = None) -> None:
    """`minirun start`: open the FIFO's reading end; the waiting process's open returns, it
    writes one byte and execs. Then the poststart hooks."""
    import select
    record = _record(container_id, root)
    fifo = state_root(root) / container_id / "exec.fifo"
    if not fifo.exists() or not _alive(record):
        raise RuntimeFailure(f"container {container_id} is {status(container_id, root)}, "
                             "not created: only a created container can be started")
    gate = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        while not select.select([gate], [], [], 0.1)[0] or not os.read(gate, 1):
            if not _alive(record):
                raise RuntimeFailure(f"container {container_id} ended before it started")
    finally:
        os.close(gate)
        fifo.unlink(missing_ok=True)
    for hook in record["hooks"]["poststart"]:
        _run_hook(hook, state_of(container_id, root), must_succeed=False)


def kill(container_id: str, signal_name: str, everything: bool = False,
         root: str | None = None) -> None:
    """`minirun kill`: send a signal to the container's process (--all: to every process in
    its cgroup), through a pidfd, so that a reused PID cannot be hit."""
    sig = parse_signal(signal_name)
    record = _record(container_id, root)
    if not _alive(record):
        raise RuntimeFailure(f"container {container_id} is not running")
    targets = [record["pid"]]
    if everything:
        procs = cgroups.of_container(container_id, record["cgroups_path"]).directories()[0]
        targets = [int(pid) for pid in (procs / "cgroup.procs").read_text().split()]
    for pid in targets:
        try:
            handle = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if pid != record["pid"] or _alive(record):
                signal.pidfd_send_signal(handle, sig)
        finally:
            os.close(handle)


def parse_signal(name: str) -> int:
    text = str(name).upper()
    if text.isdigit():
        return int(text)
    try:
        return signal.Signals["SIG" + text.removeprefix("SIG")].value
    except KeyError:
        raise RuntimeFailure(f"unknown signal {name!r}: give a number or a name like TERM") from None


def delete(container_id: str, force: bool = False, root: str | None = None) -> None:
    """`minirun delete`: remove what create made: the cgroup (killing what is left in it),
    the state; then the poststop hooks. A running container only with --force (SIGKILL)."""
    record = _record(container_id, root)
    if _alive(record):
        if not force:
            raise RuntimeFailure(f"container {container_id} is {status(container_id, root)}: "
                                 "stop it first, or use `minirun delete --force`")
        _kill(record["pid"])
        deadline = time.monotonic() + 10
        while _alive(record) and time.monotonic() < deadline:
            time.sleep(0.01)
    cgroups.of_container(container_id, record["cgroups_path"]).remove()
    current = state_of(container_id, root)
    _remove_state(state_root(root) / container_id)
    for hook in record["hooks"]["poststop"]:
        _run_hook(hook, current, must_succeed=False)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _run_hook(hook: dict, current: dict, must_succeed: bool) -> None:
    """A hook: its program, with the container's state as JSON on stdin (config.md, "POSIX-
    platform Hooks"). A failing prestart/createRuntime hook fails `create`; the others warn."""
    import sys
    env = dict(item.split("=", 1) for item in hook["env"] if "=" in item)
    try:
        result = subprocess.run([hook["path"], *hook["args"][1:]], executable=hook["path"],
                                input=json.dumps(current).encode(), env=env,
                                timeout=hook["timeout"], capture_output=True)
        failure = f"exited {result.returncode}: {result.stderr.decode(errors='replace').strip()}" \
            if result.returncode else None
    except (OSError, subprocess.TimeoutExpired) as error:
        failure = str(error)
    if failure and must_succeed:
        raise RuntimeFailure(f"hook {hook['path']} {failure}")
    if failure:
        print(f"minirun: warning: hook {hook['path']} {failure}", file=sys.stderr)


# -- exec: one more process in a running container, as engines ask -----------------------------

def exec_process(container_id: str, process_data: dict, detach: bool, pid_file: str | None,
                 console_socket: str | None, root: str | None = None) -> int:
    """`minirun exec --process FILE ID`: join the container's namespaces (all those of its
    process that differ from ours: /proc/PID/ns/*) and cgroup, then take the same last steps
    as its first process. --detach returns once it has exec'd; else wait for its status."""
    from minirun import signals
    record = _record(container_id, root)
    process = parse_process(process_data, "process")
    if not _alive(record) or status(container_id, root) != "running":
        raise RuntimeFailure(f"container {container_id} is not running")
    plan = load(Path(record["bundle"]), container_id)      # its seccomp rules apply too
    pid = record["pid"]
    joined = {}
    for name in ("cgroup", "ipc", "uts", "net", "mnt", "user", "pid"):
        if os.stat(f"/proc/{pid}/ns/{name}").st_ino != os.stat(f"/proc/self/ns/{name}").st_ino:
            joined[name] = os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    if not _alive(record):
        raise RuntimeFailure(f"container {container_id} has just ended")
    cgroup = cgroups.of_container(container_id, record["cgroups_path"])
    console = None
    if process.terminal:
        if not console_socket:
            raise RuntimeFailure("process.terminal is true: give --console-socket")
        console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        console.connect(console_socket)

    def enter() -> None:
        # In spawn.fork's intermediate process, so that the child it clones next is born inside
        # (see enter.exec_in). The user namespace after the others: until then we are the
        # host's root, who may join any namespace; after it, the IDs are the container's
        # (last_steps sets them), and we hold every capability in it, so may still join its
        # PID namespace, which it owns (setns(2)).
        cgroup.join()
        for name in ("cgroup", "ipc", "uts", "net", "mnt", "user", "pid"):
            if name in joined:
                namespaces.setns(joined[name])

    def become(link) -> None:
        link.console = console
        spawn.last_steps(process, link, plan.seccomp, QUIET, outlives_runtime=detach)

    with signals.held():
        try:
            child, _ = spawn.fork(enter, become, False, "joining the container failed",
                                  process.args, process.env, by_intermediate=True)
        finally:
            for fd in joined.values():
                os.close(fd)
            if console:
                console.close()
        if pid_file:
            _write_pid_file(pid_file, child)
        if detach:
            return 0
        return container._supervise(child)
