"""Key management, factory reset and maintenance mode, loaded per request (bmc.commands)."""

from bmc import errors
from bmc.dispatch import arg


def provision(app, req):
    role = arg(req.args, "role", str, "admin")
    key = arg(req.args, "key", str, required=True)
    return {"key_id": app.auth.provision(role, key)}


def add(app, req):
    role = arg(req.args, "role", str, required=True)
    key = arg(req.args, "key", str, required=True)
    return {"key_id": app.auth.add(role, key)}


def revoke(app, req):
    kid = arg(req.args, "key_id", str, required=True)
    app.auth.revoke(kid)
    return {"revoked": kid, "keys": app.auth.list()}


def listing(app, req):
    return {"keys": app.auth.list()}


def factory_reset(app, req):
    if not app.board.bootsel():
        raise errors.CmdError(
            errors.PRESENCE_REQUIRED, "hold BOOTSEL on the BMC for a factory reset"
        )
    app.factory_reset()
    return {"reset": True}


def maintenance(app, req):
    try:
        app.request_maintenance()
    except OSError as e:  # no room on the flash for the flag: refused, no reboot
        raise errors.CmdError(errors.STORAGE, "could not store the maintenance flag: %s" % e)
    return {"maintenance": "next boot", "rebooting": True}
