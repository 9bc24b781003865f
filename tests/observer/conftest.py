"""Fixtures of the Observer tests: real gRPC servers on port 0 or unix sockets, fed with
generated, enriched-looking flows (tests/observer/agents.py)."""

from __future__ import annotations

import tempfile

import pytest

from tests.observer.agents import InProcessAgent


@pytest.fixture
def agent():
    a = InProcessAgent().start()
    yield a
    a.stop()


@pytest.fixture
def sockdir():
    with tempfile.TemporaryDirectory(prefix="pf-obs-") as d:
        yield d
