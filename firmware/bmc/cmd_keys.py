"""Key management, factory reset and maintenance mode."""

from bmc import errors
from bmc.dispatch import ADMIN, PUBLIC, arg


def register(app):
    d = app.dispatch
    auth = app.auth

    def provision(req):
        role = arg(req.args, "role", str, "admin")
        key = arg(req.args, "key", str, required=True)
        return {"key_id": auth.provision(role, key)}

    def add(req):
        role = arg(req.args, "role", str, required=True)
        key = arg(req.args, "key", str, required=True)
        return {"key_id": auth.add(role, key)}

    def revoke(req):
        kid = arg(req.args, "key_id", str, required=True)
        auth.revoke(kid)
        return {"revoked": kid, "keys": auth.list()}

    def listing(req):
        return {"keys": auth.list()}

    def factory_reset(req):
        if not app.board.bootsel():
            raise errors.CmdError(
                errors.PRESENCE_REQUIRED, "hold BOOTSEL on the BMC for a factory reset"
            )
        app.factory_reset()
        return {"reset": True}

    def maintenance(req):
        app.request_maintenance()
        return {"maintenance": "next boot", "rebooting": True}

    d.register("keys-provision", PUBLIC, provision)
    d.register("keys-add", ADMIN, add)
    d.register("keys-revoke", ADMIN, revoke)
    d.register("keys-list", ADMIN, listing)
    d.register("factory-reset", PUBLIC, factory_reset)
    d.register("maintenance", ADMIN, maintenance)
