"""The simulated board's flash: littlefs (VfsLfs2) on a block device backed by an image file.

The same filesystem code as on an RP2040 (MicroPython's littlefs), with blocks stored in a
file: `mount(image_path, "/flash")`. Writes go straight to the file with no caching, so a
process killed at any moment leaves the image as a power cut would leave the flash chip
(every block program either happened or did not).
"""

import os

import vfs

BLOCK_SIZE = 4096
BLOCK_COUNT = 256  # 1 MiB, about the filesystem of a 2 MB Pico
PROG_SIZE = 256  # as the rp2 port's _boot.py mounts its flash (littlefs caches: 1 KiB)

_IOCTL_BLOCK_COUNT = 4
_IOCTL_BLOCK_SIZE = 5
_IOCTL_BLOCK_ERASE = 6
_ERASED = b"\xff" * 256  # erases write this piece by piece: no block-sized buffer held


class FileBlockDevice:
    def __init__(self, f, block_size=BLOCK_SIZE, block_count=BLOCK_COUNT):
        self.f = f
        self.block_size = block_size
        self.block_count = block_count
        # littlefs reads often (a 60 KB file: ~130 reads, most following the last one):
        # bound methods, and no seek where the file already is
        self._seek = f.seek
        self._readinto = f.readinto
        self._pos = -1  # the image file's position after the last read, -1: unknown

    def readblocks(self, block, buf, offset=0):
        at = block * self.block_size + offset
        if at != self._pos:
            self._seek(at)
        self._pos = -1
        n = self._readinto(buf)
        if n is None or n < len(buf):
            raise OSError(5)  # EIO: the image is shorter than the filesystem
        self._pos = at + n

    def writeblocks(self, block, buf, offset=None):
        if offset is None:  # simple interface: erase, then program whole blocks
            offset = 0
        self._pos = -1
        self.f.seek(block * self.block_size + offset)
        self.f.write(buf)

    def ioctl(self, op, arg):
        if op == _IOCTL_BLOCK_COUNT:
            return self.block_count
        if op == _IOCTL_BLOCK_SIZE:
            return self.block_size
        if op == _IOCTL_BLOCK_ERASE:
            self._fill(arg * self.block_size, self.block_size)
            return 0
        return None

    def _fill(self, at, n):
        """Write n erased (0xff) bytes at offset `at`."""
        self._pos = -1
        f = self.f
        f.seek(at)
        k = len(_ERASED)
        while n > 0:
            f.write(_ERASED if n >= k else _ERASED[:n])
            n -= k


def open_image(path, block_count=BLOCK_COUNT):
    """Open the image file, creating or extending it with erased blocks; (file, blank)."""
    size = BLOCK_SIZE * block_count
    try:
        have = os.stat(path)[6]
    except OSError:
        have = 0
        open(path, "wb").close()
    f = open(path, "r+b")
    if have < size:
        FileBlockDevice(f)._fill(have, size - have)
    return f, have == 0


def mount(path, mountpoint, log=None):
    """Mount the image at `mountpoint`, formatting it when blank or unreadable.

    Returns the block device. Like MicroPython's own `_boot.py` on the rp2 port, with
    its program size (256, which sets littlefs's caches), a filesystem that does not
    mount is formatted; `log(message)` hears about it.
    """
    f, created = open_image(path)
    bdev = FileBlockDevice(f)
    if created:
        vfs.VfsLfs2.mkfs(bdev, progsize=PROG_SIZE)
    try:
        fs = vfs.VfsLfs2(bdev, progsize=PROG_SIZE)
    except OSError as e:
        if log is not None:
            log("flash image %s does not mount (%r): formatting" % (path, e))
        vfs.VfsLfs2.mkfs(bdev, progsize=PROG_SIZE)
        fs = vfs.VfsLfs2(bdev, progsize=PROG_SIZE)
    vfs.mount(fs, mountpoint)
    return bdev
