#!/bin/sh
# The app of the built-in image `hello`: it reports what it can see of the machine it runs on.
# Run it as a container and as a VM and compare: the kernel line is the whole difference.
echo "Hello from $(hostname)"
echo "  pid:        $$"
echo "  kernel:     $(uname -r)"
echo "  cgroup:     $(cut -d: -f3 /proc/self/cgroup | sort -u | tr '\n' ' ')"
echo "  processes:  $(ls -d /proc/[0-9]* | wc -l) visible"
echo "  network:    $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
