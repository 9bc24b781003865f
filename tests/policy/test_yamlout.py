"""The YAML writer: what it writes reads back as the same data, comments included."""

from __future__ import annotations

import pytest
import yaml

from agent.policy.yamlout import Commented, dump, dump_all, scalar


@pytest.mark.parametrize("value", ["true", "yes", "y", "N", "on", "null", "~", "1", "1.5", "1e3",
                                   "0x1f", "012", "", " lead", "a: b", "a #b", "-", "*x", "&x",
                                   "2001:db8::1/128", "10.0.0.1/32", "app.kubernetes.io/name",
                                   "it's", 'say "hi"', "ünïcode", "@at", "%pct", "!tag"])
def test_strings_read_back_as_strings(value):
    assert yaml.safe_load(f"k: {scalar(value)}") == {"k": value}


def test_plain_where_safe():
    assert scalar("cart") == "cart" and scalar("10.0.0.1/32") == "10.0.0.1/32"
    assert scalar(8080) == "8080" and scalar(True) == "true"
    assert scalar("80") == '"80"' and scalar("yes") == '"yes"'


def test_layout_and_comments():
    doc = {"a": {"b": [], "c": {}}, "list": [Commented({"x": 1, "y": [1, 2]}, "first item"),
                                             Commented("s", "on s"), {"z": {"w": 2}}],
           "d": Commented("v", "trailing"), "e": Commented({"f": 1}, "after key")}
    text = dump(doc, "head\nline 2")
    assert text == (
        "# head\n# line 2\n"
        "a:\n  b: []\n  c: {}\n"
        "list:\n# first item\n- x: 1\n  \"y\":\n  - 1\n  - 2\n- s  # on s\n- z:\n    w: 2\n"
        "d: v  # trailing\n"
        "e:  # after key\n  f: 1\n")
    assert yaml.safe_load(text) == {"a": {"b": [], "c": {}}, "list": [{"x": 1, "y": [1, 2]}, "s",
                                                                      {"z": {"w": 2}}],
                                    "d": "v", "e": {"f": 1}}


def test_dump_all():
    text = dump_all([({"a": 1}, "one"), ({"b": 2}, "")], header="top")
    assert text == "# top\n---\n# one\na: 1\n---\nb: 2\n"
    assert [d for d in yaml.safe_load_all(text) if d] == [{"a": 1}, {"b": 2}]
