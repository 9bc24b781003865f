"""One error hierarchy: every error podflow raises on purpose is a PodflowError (so the
agent's `except PodflowError` and a user's see it), and the classes that moved into
agent/errors.py keep the base their callers catch them by."""

from __future__ import annotations

import errno

import pytest

from agent import errors

MOVED = [
    # (class, the kind of podflow error, the base its callers already catch it by)
    (errors.BtfError, errors.DatapathError, errors.DatapathError),
    (errors.TcxUnsupported, errors.AttachError, errors.AttachError),
    (errors.DnsDecodeError, errors.PodflowError, ValueError),
    (errors.ObjectError, errors.MetadataError, ValueError),
    (errors.ConntrackError, errors.MetadataError, OSError),
    (errors.InvalidRequest, errors.PodflowError, ValueError),
]


@pytest.mark.parametrize("cls,kind,base", MOVED, ids=[m[0].__name__ for m in MOVED])
def test_moved_errors_join_the_hierarchy_and_keep_their_base(cls, kind, base):
    assert issubclass(cls, errors.PodflowError) and issubclass(cls, kind)
    assert issubclass(cls, base)


def test_conntrack_error_keeps_errno_and_message():
    exc = errors.ConntrackError(errno.EPERM, "cannot open the conntrack netlink socket")
    assert exc.errno == errno.EPERM
    assert str(exc) == "[Errno 1] cannot open the conntrack netlink socket"


def test_the_modules_that_raise_them_still_name_them():
    """`btf.BtfError`, `tc.TcxUnsupported` ... stay importable where they are raised."""
    from agent.annotate import dns
    from agent.datapath import btf, tc
    from agent.enrich import conntrack
    from agent.enrich.k8s import objects

    assert (btf.BtfError, tc.TcxUnsupported, dns.DnsDecodeError, objects.ObjectError,
            conntrack.ConntrackError) == (errors.BtfError, errors.TcxUnsupported,
                                          errors.DnsDecodeError, errors.ObjectError,
                                          errors.ConntrackError)
