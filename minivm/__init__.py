"""minivm: the same image's app, booted in a virtual machine with its own kernel.

One module per piece of the virtual machine or step of its boot: `kernel` (the guest's kernel),
`initramfs` (its first filesystem, with the guest init `guest-init.sh`, `become.c`, its step
into the app, and `relay.c`, the guest's end of `minivm exec`), `disks` (the image's layers as read-only disks), `accel` (who runs its
instructions), `hardware` (the machine QEMU presents), `modules` (the guest kernel modules its
virtio hardware needs), `machine` (its life, over QMP), `streams` (the app's stdin, stdout and
stderr between minivm and the guest's ports), `cache` (what is built once), and for detached VMs
`supervisor`, `monitor` (QMP) and `agent` (exec). `boot` tells the story of one boot, step by
step, calling into them; `cli` is only the command line.
"""
