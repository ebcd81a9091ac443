"""inventory-get (public) and inventory-set (admin): see bmc.inventory."""

from bmc import inventory
from bmc.dispatch import ADMIN, PUBLIC, arg


def register(app):
    inv = inventory.Inventory(app.store, app.events)
    app.inventory = inv

    def get(req):
        return inv.get()

    def put(req):
        a = req.args
        return inv.set(
            arg(a, "url", str, required=True),
            arg(a, "keys", list, []),
            arg(a, "generation", int, required=True),
            arg(a, "expect", int),
        )

    def forget():
        app.store.remove("inventory")
        inv.rec = {}

    app.reset_hooks.append(forget)
    app.dispatch.register("inventory-get", PUBLIC, get)
    app.dispatch.register("inventory-set", ADMIN, put)
