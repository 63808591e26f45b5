"""Cutting one real node off the network while it keeps running, for the system tests.

Nodes connect to their peers without choosing a source address, so on loopback every
outgoing connection leaves from 127.0.0.1: a rule on the victim's address alone (iptables
-s/-d 127.0.0.X) would stop the connections others open to it but not those it opens
itself. So the cut is made with policy routing in a private network namespace:

- the calling thread (and so every process it starts) moves to a new network namespace,
  where nothing else runs, and brings its loopback up;
- Linux looks up the ``local`` table first (rule 0), before any rule one could add, so it
  is moved behind (pref 100);
- a node that may be cut off runs under its own uid (setpriv, keeping only the file-access
  capabilities it needs as a non-root process), and the cut is two rules: ``uidrange UID
  blackhole`` (every packet the node sends: replies on accepted connections and its own
  connections) and ``to 127.0.0.X blackhole`` (every packet sent to it). Sockets keep working
  once the rules go.

It needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), ``ip`` and ``setpriv``;
:func:`private_network_or_reason` says why not when it cannot be done.
"""

import ctypes
import os
import shutil
import subprocess
import sys

from .harness import NodeProcess, child_env

CLONE_NEWNET = 0x40000000
VICTIM_UID = 47_011
_CAPABILITIES = "+dac_override,+dac_read_search"


class PrivateNetwork:
    """The calling thread, and every process it starts, in a new network namespace."""

    def __init__(self):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.home = None
        self.cuts = []

    def __enter__(self):
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        if self.libc.unshare(CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            os.close(self.home)
            raise OSError(error, f"unshare(CLONE_NEWNET): {os.strerror(error)}")
        try:
            self.ip("link", "set", "lo", "up")
            self.ip("rule", "add", "pref", "100", "lookup", "local")
            self.ip("rule", "del", "pref", "0", "lookup", "local")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        if self.libc.setns(self.home, CLONE_NEWNET) != 0:  # pragma: no cover
            raise OSError(ctypes.get_errno(), "setns back to the original network namespace failed")
        os.close(self.home)

    @staticmethod
    def ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)

    def cut(self, address, uid):
        self.cuts = [("to", address), ("uidrange", f"{uid}-{uid}")]
        for selector, value in self.cuts:
            self.ip("rule", "add", "pref", "10", selector, value, "blackhole")

    def heal(self):
        for selector, value in self.cuts:
            self.ip("rule", "del", "pref", "10", selector, value, "blackhole")
        self.cuts = []


class VictimNode(NodeProcess):
    """A node that runs as *uid* (with the capabilities that let it read and write as root
    did), so that routing rules can pick out its packets."""

    def __init__(self, *args, uid, **kwargs):
        super().__init__(*args, **kwargs)
        self.uid = uid

    @staticmethod
    def wrap(command, uid):
        return [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            f"--inh-caps={_CAPABILITIES}",
            f"--ambient-caps={_CAPABILITIES}",
            *command,
        ]

    def command(self, *extra):
        return self.wrap(super().command(*extra), self.uid)


def private_network_or_reason():
    """A :class:`PrivateNetwork` entered, in which a uid's packets can be dropped and a
    process can run as that uid; or None and the reason none can be made here."""
    if os.geteuid() != 0:
        return None, "not root"
    for tool in ("ip", "setpriv"):
        if shutil.which(tool) is None:
            return None, f"no {tool}"
    try:
        network = PrivateNetwork()
        network.__enter__()
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"no private network namespace: {e}"
    try:
        network.cut("127.0.0.255", VICTIM_UID)  # rules of both kinds can be made
        network.heal()
        probe = VictimNode.wrap([sys.executable, "-c", "import nodedb"], VICTIM_UID)
        subprocess.run(probe, check=True, capture_output=True, timeout=60, env=child_env())
    except (OSError, subprocess.SubprocessError) as e:
        network.__exit__(None, None, None)
        return None, f"cannot cut one process off: {e}"
    return network, None
