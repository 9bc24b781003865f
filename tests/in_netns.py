"""Run a function in a thread that joined a network namespace: the sockets it creates live
there (setns(2) changes the network namespace of the calling thread only). How a test puts a
server (the fake API server) inside a lab node, where the node's agent reaches it."""

from __future__ import annotations

import ctypes
import os
import threading

CLONE_NEWNET = 0x40000000


def call_in_netns(netns: str, fn):
    """fn() run in a thread inside /run/netns/`netns`; its result, or its exception."""
    result: dict = {}

    def target():
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns({netns})")
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001  handed to the caller's thread
            result["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
