"""Assemble a bcc program from bpf/*.c and its local headers as ONE source text.

bcc rewrites its map syntax (`events.ringbuf_output(...)`, `flows.lookup(...)`) only in the
main file it compiles; the same call in a file pulled in with `#include "x.h"` compiles to an
indirect call the verifier rejects ("unknown opcode 8d"). Inlining the project's own quoted
includes keeps the headers as the unit of design (drop.h, dns.h, maps.h ...) while bcc sees a
single main file. System includes (`#include <...>`) are left to the compiler.
"""

from __future__ import annotations

import os
import re

_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def inline_includes(path: str, _seen: set[str] | None = None) -> str:
    """The text of `path` with each `#include "x.h"` (relative to the including file)
    replaced by that file's text, each file at most once (headers have guards anyway)."""
    seen = set() if _seen is None else _seen
    real = os.path.realpath(path)
    if real in seen:
        return ""
    seen.add(real)
    out: list[str] = [f'#line 1 "{path}"\n']
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            match = _LOCAL_INCLUDE.match(line)
            if match is None:
                out.append(line)
                continue
            child = os.path.join(os.path.dirname(path), match.group(1))
            out.append(inline_includes(child, seen))
            out.append(f'#line {lineno + 1} "{path}"\n')
    return "".join(out)
