"""The command table: which module answers which command, with the role it needs.

Loaded once at start by `bmc.app` and dropped after. The hot commands (hello,
nonce, status, power, reset, bmc-reboot, identify, boot-file-read, metrics) stay
resident (`bmc.cmd_core`, `bmc.cmd_metrics`); every other command's module is
imported for its request and dropped after it (`Dispatcher.register_lazy`), so the code
of rarely used commands costs RAM only while it runs.
"""

from bmc import cmd_core, cmd_metrics
from bmc.dispatch import ADMIN, OPERATOR, PUBLIC

# name, role, module (bmc.<module>), function(app, req)
LAZY = (
    ("events", OPERATOR, "cmd_ops", "events"),
    ("console", OPERATOR, "cmd_ops", "console"),
    ("console-write", OPERATOR, "cmd_ops", "console_write"),
    ("config-get", OPERATOR, "cmd_ops", "config_get"),
    ("config-set", ADMIN, "cmd_ops", "config_set"),
    ("keys-provision", PUBLIC, "cmd_keys", "provision"),
    ("keys-add", ADMIN, "cmd_keys", "add"),
    ("keys-revoke", ADMIN, "cmd_keys", "revoke"),
    ("keys-list", ADMIN, "cmd_keys", "listing"),
    ("factory-reset", PUBLIC, "cmd_keys", "factory_reset"),
    ("maintenance", ADMIN, "cmd_keys", "maintenance"),
    ("inventory-get", PUBLIC, "cmd_inventory", "get"),
    ("inventory-set", ADMIN, "cmd_inventory", "put"),
    ("boot-manifest-get", PUBLIC, "cmd_boot", "manifest_get"),
    ("boot-manifest-set", ADMIN, "cmd_boot", "manifest_set"),
    ("boot-file-put", ADMIN, "cmd_boot", "file_put"),
    ("boot-usb", OPERATOR, "cmd_boot", "usb"),
    ("boot-report", OPERATOR, "cmd_boot", "report"),
    ("boot-status", PUBLIC, "cmd_boot", "status"),
)


def register(app):
    d = app.dispatch
    cmd_core.register(app)
    cmd_metrics.register(app)
    for name, role, module, function in LAZY:
        d.register_lazy(name, role, module, function)
