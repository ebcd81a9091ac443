"""tools/frame_sizes.py reads MicroPython's frame sizes right, and the functions run for
every chunk of a stream keep their frames on the C stack (no heap allocation per chunk)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

from racklet_host import fwbuild

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("frame_sizes", ROOT / "tools" / "frame_sizes.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["frame_sizes"] = mod
    spec.loader.exec_module(mod)
    return mod


PROBE = """
def small(a):
    return a + 1

def many_locals(a, b, c, d, e, f, g, h, i, j, k, l):
    return a

def guarded(a):
    try:
        return a + 1
    except ValueError as e:
        return e

class Box:
    def method(self):
        return self
"""


def test_reads_state_sizes_from_mpy_cross_output(tmp_path: pathlib.Path) -> None:
    fs = _tool()
    src = tmp_path / "probe.py"
    src.write_text(PROBE)
    out = tmp_path / "probe.mpy"
    fwbuild.compile_one(fwbuild.mpy_cross(), src, out, "probe.py")
    static = fs.static_names([src])
    got = {f.name: f for f in fs.frames(out.read_bytes(), static)}
    assert {"<module>", "small", "many_locals", "guarded", "Box", "Box.method"} <= set(got)
    assert not got["small"].on_heap and got["small"].n_exc == 0
    # twelve arguments are twelve locals: more than the 11 words MicroPython keeps on the stack
    assert got["many_locals"].n_state >= 12 and got["many_locals"].on_heap
    # `except ... as e` nests a second handler (the one that deletes e)
    assert got["guarded"].n_exc == 2 and got["guarded"].words == got["guarded"].n_state + 6
    assert got["Box.method"].n_state < 11


# Run for every chunk of a boot-file stream or a metrics scrape: a heap frame here would
# cost an allocation per chunk (see FrameWriter.send_prepared).
PER_CHUNK = {
    "bmc.codec": [
        "FrameWriter.send_prepared",
        "FrameWriter._send",
        "FrameWriter._write_all",
        "FrameReader.next_frame",
    ],
    "bmc.dispatch": ["Request.line", "Request.chunk_prepared", "Request.chunk"],
    # the links' writes (a frame each), on the board and in the simulator
    "bmc.board.rp2": ["_Link.write"],
    "bmc.board.sim": ["_Link.write"],
}


# Run for every request or every loop pass: the same, once or twice per request.
PER_REQUEST = {
    "bmc.app": ["App.step"],
    "bmc.dispatch": ["Dispatcher.poll"],
    "bmc.codec": [
        "FrameReader._front",
        "FrameReader._crc_ok",
        "loads",
        "FrameWriter.send_json",
        "FrameWriter._staged",
        "FrameWriter.put_pieces",
        "crc32_pieces",
    ],
    "bmc.cmd_core": ["register.status_reply"],
    "bmc.console": ["Console.poll"],
    "bmc.power": ["PowerController.status", "PowerController.tick"],
    "bmc.board.rp2": ["Board.wait"],
    "bmc.board.sim": ["Board.wait", "Board._ready"],
}


def test_per_chunk_and_per_request_functions_keep_their_frames_on_the_c_stack() -> None:
    fs = _tool()
    fs.fwbuild.build(fs.BUILD)
    static = fs.static_names(fwbuild.sources())
    built = dict(fs.modules(fs.BUILD))
    for mod, names in list(PER_CHUNK.items()) + list(PER_REQUEST.items()):
        frames = {f.name: f for f in fs.frames(built[mod].read_bytes(), static)}
        for name in names:
            f = frames[name]
            assert not f.on_heap, f"{mod}:{name} has a {f.words}-word frame: on the heap"
