"""Atomic JSON files on the board's filesystem.

    st = Store(board.root + "/data")        # creates the folder if needed
    value, problem = st.load("config", {})  # problem: None, "missing" or "corrupt: ..."
    st.save("config", value)                # temp file, then os.rename

A save writes `<name>.json.tmp` and renames it over `<name>.json`: littlefs
renames atomically (also on power loss) and overwrites, so after a crash the
file is the old version or the new one, never neither. `load` falls back to
`default` on a missing or corrupt file and says which, so the caller can log
an event. Line files (`append_line`, `read_lines`, `save_lines`) serve the
event log: append is safe on littlefs because data is committed on close.
"""

import json
import os


class Store:
    def __init__(self, root):
        self.root = root
        if root:
            _mkdirs(root)

    def path(self, name, ext=".json"):
        return self.root + "/" + name + ext

    def load(self, name, default):
        """Return (value, problem). On any problem value is `default`."""
        path = self.path(name)
        try:
            f = open(path, "rb")
        except OSError:
            return default, "missing"
        try:
            try:
                value = json.load(f)  # parsed as read: the file's text is never held whole
            finally:
                f.close()
        except MemoryError:
            raise
        except Exception as e:
            return default, "corrupt: " + _why(e)
        if default is not None and type(value) is not type(default):
            return default, "corrupt: expected " + type(default).__name__
        return value, None

    def save(self, name, value):
        """Write `value` as JSON (to a temp file, renamed over the old one). The text goes
        to the file as it is made, never whole in RAM: a record of a few KB (a boot
        manifest of 32 files) needs no block of its size on a fragmented heap."""
        self.saver(name).write(value)

    def saver(self, name):
        """A save of `name` whose temp file is open now: `write(value)` finishes it,
        `abort()` drops it. An open littlefs file takes a block of over 1 KB (its
        cache); a caller about to build a large value opens it first, while the heap
        still has such a block."""
        return _Save(self.path(name))

    def remove(self, name, ext=".json"):
        try:
            os.remove(self.path(name, ext))
        except OSError:
            pass

    # Line files (JSON per line), for the event log.

    def append_line(self, name, line):
        self.append_lines(name, (line,))

    def append_lines(self, name, lines):
        _write_lines(self.path(name, ".jsonl"), "a", lines)

    def read_lines(self, name, size=-1):
        """Yield the lines of a line file (none when missing), as text. A line longer
        than `size` bytes comes in pieces of `size`, and one that is not UTF-8 as "\n":
        the writer wrote neither, the reader skips them and reads on."""
        try:
            f = open(self.path(name, ".jsonl"), "rb")
        except OSError:
            return
        try:
            while True:
                line = f.readline(size)
                if not line:
                    return
                try:
                    line = line.decode()
                except UnicodeError:
                    line = "\n"
                yield line
        finally:
            f.close()

    def save_lines(self, name, lines):
        """Replace a line file with `lines` (any iterable, even one that reads the file
        being replaced: it is renamed over only once `lines` is exhausted). Written one
        line at a time, so the text is never whole in RAM."""
        path = self.path(name, ".jsonl")
        _write_lines(path + ".tmp", "w", lines)
        os.rename(path + ".tmp", path)


def _write_lines(path, mode, lines):
    f = open(path, mode)
    try:
        for line in lines:
            f.write(line)
            f.write("\n")
    finally:
        f.close()


def _why(e):
    s = str(e)
    return type(e).__name__ + (" " + s if s else "")


class _Save:
    def __init__(self, path):
        self._path = path
        self._f = open(path + ".tmp", "w")

    def write(self, value):
        f, self._f = self._f, None
        try:
            json.dump(value, f)
        finally:
            f.close()
        os.rename(self._path + ".tmp", self._path)

    def abort(self):
        f, self._f = self._f, None
        if f is not None:
            f.close()
            try:
                os.remove(self._path + ".tmp")
            except OSError:
                pass


def _mkdirs(path):
    parts = path.split("/")
    cur = ""
    for i, p in enumerate(parts):
        if not p:
            if i == 0:
                cur = ""
            continue
        cur = cur + "/" + p if (cur or path.startswith("/")) else p
        try:
            os.mkdir(cur)
        except OSError:
            pass
