"""inventory-get (public) and inventory-set (admin), loaded per request: see bmc.inventory."""

from bmc.dispatch import arg


def get(app, req):
    return app.inventory.get()


def put(app, req):
    a = req.args
    return app.inventory.set(
        arg(a, "url", str, required=True),
        arg(a, "keys", list, []),
        arg(a, "generation", int, required=True),
        arg(a, "expect", int),
    )
