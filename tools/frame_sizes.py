"""Which firmware functions MicroPython calls with a frame on the heap.

    .venv/bin/python tools/frame_sizes.py [--all] [MODULE ...]

MicroPython runs a bytecode function with its frame (locals, value stack and one
3-word entry per nested `try`) on the C stack when that state fits in 11 words;
a larger frame is allocated on the heap at every call and freed on return. That
costs an allocation per call, which on a fragmented 192K heap means a search for
free blocks, and counts towards the collection threshold (`gc.threshold`), so a
request whose functions have heap frames brings the next collection closer.

Reads the state sizes from the compiled firmware (`build/mpy`, rebuilt first) and
lists, per module, the functions whose frames go on the heap (with `--all`, every
function). MODULE: a name such as `bmc.dispatch` (default: every module).
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

from racklet_host import fwbuild

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "mpy"
ON_STACK_WORDS = 11  # py/objfun.c: VM_MAX_STATE_ON_STACK is 11 machine words
EXC_WORDS = 3  # an exception handler entry (mp_exc_stack_t)
_TUPLE = 10  # MP_PERSISTENT_OBJ_TUPLE
_NO_DATA = (0, 1, 2, 3, 4)  # fun table, None, False, True, Ellipsis
_TEXT = (5, 6)  # str, bytes: data and a terminating NUL


@dataclass
class Frame:
    name: str  # qualified: Class.method
    own: str  # the function's own name
    n_state: int
    n_exc: int

    @property
    def words(self) -> int:
        return self.n_state + EXC_WORDS * self.n_exc

    @property
    def on_heap(self) -> bool:
        return self.words > ON_STACK_WORDS


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0

    def byte(self) -> int:
        b = self.data[self.i]
        self.i += 1
        return b

    def uint(self) -> int:
        n = 0
        while True:
            b = self.byte()
            n = (n << 7) | (b & 0x7F)
            if not b & 0x80:
                return n

    def take(self, n: int) -> bytes:
        out = self.data[self.i : self.i + n]
        self.i += n
        return out


def _skip_obj(r: _Reader) -> None:
    kind = r.byte()
    if kind in _NO_DATA:
        return
    n = r.uint()
    if kind == _TUPLE:
        for _ in range(n):
            _skip_obj(r)
        return
    r.take(n + 1 if kind in _TEXT else n)


def _prelude(code: bytes, qstrs: List[str]) -> Frame:
    """n_state, n_exc_stack and the name from a bytecode function's prelude
    (MP_BC_PRELUDE_SIG_DECODE and MP_BC_PRELUDE_SIZE_DECODE in py/bc.h)."""
    r = _Reader(code)
    z = r.byte()
    s = (z >> 3) & 0xF
    e = (z >> 2) & 1
    n = 0
    while z & 0x80:
        z = r.byte()
        s |= (z & 0x30) << (2 * n)
        e |= (z & 0x02) << n
        n += 1
    while r.byte() & 0x80:  # the prelude's sizes; the info section follows
        pass
    name = qstrs[r.uint()]
    return Frame(name, name, s + 1, e)


def _raw_code(r: _Reader, qstrs: List[str], scope: str | None) -> Iterator[Frame]:
    kind_len = r.uint()
    if kind_len & 3:
        raise ValueError("native code: compile the firmware as bytecode")
    code = r.take(kind_len >> 3)
    frame = _prelude(code, qstrs)
    top = scope is None
    if not top and scope:
        frame.name = f"{scope}.{frame.name}"
    yield frame
    if kind_len & 4:
        for _ in range(r.uint()):
            yield from _raw_code(r, qstrs, "" if top else frame.name)


def frames(mpy: bytes, static: Dict[int, str] | None = None) -> List[Frame]:
    """Every function of one .mpy file (version 6), the module's own code first.
    `static`: names of MicroPython's built-in qstrs by index (`static_names`)."""
    r = _Reader(mpy)
    if r.take(2) != b"M\x06":
        raise ValueError("not an .mpy file of version 6")
    r.take(2)  # features, small-int bits
    n_qstr = r.uint()
    n_obj = r.uint()
    qstrs: List[str] = []
    for _ in range(n_qstr):
        n = r.uint()
        if n & 1:
            qstrs.append((static or {}).get(n >> 1, f"<qstr {n >> 1}>"))  # built in
        else:
            qstrs.append(r.take((n >> 1) + 1)[:-1].decode())
    for _ in range(n_obj):
        _skip_obj(r)
    return list(_raw_code(r, qstrs, None))


def static_names(sources: List[pathlib.Path]) -> Dict[int, str]:
    """Which of the sources' function names MicroPython has built in, by index: read
    from a probe module of one function per name (an .mpy names those by index)."""
    names = {"<module>"}
    for src in sources:
        for node in ast.walk(ast.parse(src.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
    wanted = sorted(n for n in names if n.isidentifier())
    with tempfile.TemporaryDirectory() as tmp:
        probe = pathlib.Path(tmp) / "probe.py"
        probe.write_text("".join(f"def {n}():\n    pass\n" for n in wanted))
        out = probe.with_suffix(".mpy")
        fwbuild.compile_one(fwbuild.mpy_cross(), probe, out, "probe.py")
        found = frames(out.read_bytes())
    static: Dict[int, str] = {}
    # the probe's functions come in the order written: the module, then `wanted`
    for f, name in zip(found, ["<module>", *wanted]):
        if f.own.startswith("<qstr "):
            static[int(f.own[6:-1])] = name
    return static


def modules(build: pathlib.Path) -> Iterator[Tuple[str, pathlib.Path]]:
    for p in sorted(build.rglob("*.mpy")):
        rel = p.relative_to(build).with_suffix("")
        yield ".".join(rel.parts), p


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="every function, not only heap frames")
    ap.add_argument("module", nargs="*", help="e.g. bmc.dispatch (default: all)")
    a = ap.parse_args(argv)
    fwbuild.build(BUILD)
    static = static_names(fwbuild.sources())
    for mod, path in modules(BUILD):
        if a.module and mod not in a.module:
            continue
        shown = [f for f in frames(path.read_bytes(), static) if a.all or f.on_heap]
        for f in shown:
            where = "heap " if f.on_heap else "stack"
            print(f"{where} {f.words:3d} words  {mod}:{f.name}  (state {f.n_state}, try {f.n_exc})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
