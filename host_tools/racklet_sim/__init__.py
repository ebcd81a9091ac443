"""The Racklet rack simulator: virtual SBCs wired to the real firmware under MicroPython.

`bmc-sim --rack DIR --boards N` (see `racklet_sim.rack`) and, for tests, the
`racklet_sim.rack.Rack` context manager. The protocols are in docs/simulator.md.
"""
