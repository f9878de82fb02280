"""minirun: a container runtime small enough to read.

Each kernel mechanism a container is made of lives in one module named after it:
namespaces, rootfs, cgroups, network, security, image. `container` tells the story of a run,
step by step, calling into them; `spawn` makes every process that enters a container, for run,
exec and the OCI commands alike (`oci`, the interface an engine drives); `enter` joins a running container (`exec`), `lifecycle` finds
and stops one, `garbage` removes what killed runs left; `cli` is only the command line.
"""
