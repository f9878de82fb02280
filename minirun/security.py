"""Privileges: what root inside a container may still do, through python-prctl.

Root in a container is the host's root (there is no user namespace here), so the runtime takes
away what a container has no business doing before it starts the app (capabilities(7)):
- the capability bounding set keeps only Docker's default list; on execve(2) root's permitted
  set becomes its bounding set, so everything else is gone for good for this process tree,
  CAP_SYS_ADMIN (mount, pivot_root, ...) and CAP_SYS_MODULE among them;
- no_new_privs: no execve can gain privileges again, set-user-ID files included
  (Documentation/userspace-api/no_new_privs.rst);
- parent-death signal: if minirun itself dies, the kernel SIGKILLs the container's PID 1, and
  with it the whole PID namespace, so a killed runtime cannot leave a container running.
"""
import signal

import prctl

# Docker's default capability set (moby's oci/caps/defaults.go lists the same fourteen).
DEFAULT_CAPABILITIES = frozenset({
    "chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
    "net_bind_service", "net_raw", "sys_chroot", "mknod", "audit_write", "setfcap",
})


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG: SIGKILL this process when the process that forked it exits."""
    prctl.set_pdeathsig(signal.SIGKILL)


def drop_privileges(keep: frozenset[str] = DEFAULT_CAPABILITIES) -> None:
    """Shrink the bounding, inheritable, permitted and effective sets to `keep`; set no_new_privs."""
    for name in prctl.ALL_CAP_NAMES:                   # e.g. "sys_admin"
        if name not in keep:
            prctl.capbset.drop(name)
    kept = [name for name in prctl.ALL_CAP_NAMES if name in keep]
    prctl.cap_inheritable.limit()
    prctl.cap_effective.limit(*kept)        # effective must stay a subset of permitted: shrink it first
    prctl.cap_permitted.limit(*kept)
    prctl.set_no_new_privs(1)
