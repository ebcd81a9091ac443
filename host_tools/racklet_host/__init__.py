"""Host tools for Racklet BMC: the client library, discovery, `bmcctl`.

The library a tool builds on:

- `racklet_host.client.BmcClient`: one BMC, typed commands, reconnect after a reboot;
- `racklet_host.discovery.discover` / `select`: find BMCs by slot, serial or port;
- `racklet_host.keys.load_key`: key files (mode 0600, never on a command line);
- `racklet_host.errors`: one exception class per error class, all `BmcError`.
"""

from .client import BmcClient, Hello, Status, Streamed
from .discovery import BmcPort, discover
from .errors import BmcError
from .keys import Key, load_key

__all__ = [
    "BmcClient",
    "BmcError",
    "BmcPort",
    "Hello",
    "Key",
    "Status",
    "Streamed",
    "discover",
    "load_key",
]
