#!/bin/sh
# The app of the built-in image `hello`: it reports what it can see of the machine it runs on.
# Run it as a container and as a VM and compare: four lines differ, each for a reason of its own
# (docs/compare.md, "What hello shows"): the kernel is the host's or the guest's, the pid is 1 of
# a new PID namespace or the guest init's child, the processes are the container's own or a whole
# guest kernel's, and the hostname is the container's id or the image's name.
echo "Hello from $(hostname)"
echo "  pid:        $$"
echo "  kernel:     $(uname -r)"
echo "  cgroup:     $(cut -d: -f3 /proc/self/cgroup | sort -u | tr '\n' ' ')"
echo "  processes:  $(ls -d /proc/[0-9]* | wc -l) visible"
echo "  network:    $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
