"""The names a user gives, checked before anything is made: hostnames, --add-host names,
container and VM names. The same checks for minirun and minivm.

Each of them ends up in a file that others read line by line (every container's /etc/hosts, an
/etc/hostname) or in a system call: a newline in a hostname would add a line of its own to the
/etc/hosts of every container started later, and a space a second name on its line.

- A hostname is an RFC 1123 name (RFC 952 as amended by RFC 1123 section 2.1): labels of
  letters, digits and '-', 1 to 63 each, neither starting nor ending with '-', joined by '.'.
  sethostname(2) takes at most HOST_NAME_MAX (64) bytes, and fails with EINVAL past that.
- A container's or VM's --name follows Docker's rule, [a-zA-Z0-9][a-zA-Z0-9_.-]+ (so `my_app`
  works as there); it is listed in /etc/hosts (resolvers accept '_' there) and names a file in
  the state directory, so it is bounded too.
"""
import re

from minirun.errors import RuntimeFailure

HOST_NAME_MAX = 64          # sethostname(2); <limits.h>, as `getconf HOST_NAME_MAX` says
DNS_NAME_MAX = 253          # RFC 1035: a whole name (an --add-host name is never sethostname'd)
NAME_MAX = 64               # --name: listed in /etc/hosts as a hostname would be

_LABEL = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", re.ASCII)
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", re.ASCII)


def check_hostname(text: str, flag: str = "--hostname", longest: int = HOST_NAME_MAX) -> str:
    """`text` if it is an RFC 1123 hostname of at most `longest` characters; else one line."""
    if len(text) > longest:
        raise RuntimeFailure(f"invalid {flag} {text[:20]!r}...: {len(text)} characters, more "
                             f"than {longest}; give a shorter name")
    if not all(_LABEL.fullmatch(label) for label in text.split(".")):
        raise RuntimeFailure(f"invalid {flag} {text!r}: use letters, digits and '-' in labels "
                             "of 1 to 63 joined by '.', none starting or ending with '-' "
                             "(RFC 1123), as in web or db.example")
    return text


def check_name(text: str, what: str) -> str:
    """`text` if Docker would take it as a container's name, and it is not too long."""
    if len(text) > NAME_MAX:
        raise RuntimeFailure(f"invalid {what} name {text[:20]!r}...: {len(text)} characters, "
                             f"more than {NAME_MAX}; give a shorter --name")
    if not _NAME.fullmatch(text):
        raise RuntimeFailure(f"invalid {what} name {text!r}: use two or more letters, digits, "
                             "'_', '.' or '-', starting with a letter or digit")
    return text
