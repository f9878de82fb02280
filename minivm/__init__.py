"""minivm: the same image's app, booted in a virtual machine with its own kernel.

One module per piece of the virtual machine or step of its boot: `kernel` (the guest's kernel),
`initramfs` (its first filesystem, with the guest init `guest-init.sh`), `accel` (who runs its
instructions), `hardware` (the machine QEMU presents), `machine` (its life, over QMP), `cache`
(what is built once). `boot` tells the story of one boot, step by step, calling into them; `cli`
is only the command line.
"""
