"""What MicroPython has and CPython lacks (and back), in one place."""

try:
    from micropython import const  # noqa: F401
except ImportError:  # CPython: host tools and unit tests

    def const(x):  # type: ignore[misc]
        return x


try:
    from time import ticks_add, ticks_diff, ticks_ms  # noqa: F401
except ImportError:  # CPython: the type checks run against MicroPython's stubs
    import time as _time

    _PERIOD = 1 << 30
    _HALF = _PERIOD >> 1

    def ticks_ms():  # type: ignore[misc]
        return int(_time.monotonic() * 1000) & (_PERIOD - 1)  # type: ignore[attr-defined]

    def ticks_add(t, delta):  # type: ignore[misc,no-redef]
        return (t + delta) & (_PERIOD - 1)

    def ticks_diff(a, b):  # type: ignore[misc,no-redef]
        return ((a - b + _HALF) & (_PERIOD - 1)) - _HALF


try:
    from gc import mem_alloc, mem_free  # noqa: F401
except ImportError:  # CPython: no MicroPython heap to count

    def mem_alloc():  # type: ignore[misc]
        return 0

    def mem_free():  # type: ignore[misc]
        return 0
