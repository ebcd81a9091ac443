"""The `metrics` command (public): this BMC's OpenMetrics text, in chunks.

The text is rendered straight into the frame writer's payload buffer and each
full buffer goes out as one chunk frame: no copy of the whole exposition is
ever held (see `bmc.metrics`). The response says how much was sent.

`bmc.metrics` and `bmc.sensors` are imported for each request and dropped
after it (`bmc.ondemand`): a scrape every few seconds costs a module load
from flash, while the heap they would hold stays free for everything else.
What must outlive a render (its statistics, sensor error counts) is kept in
`app.metrics_state`.
"""

import gc

from bmc import ondemand
from bmc.dispatch import PUBLIC

_KEPT = ("renders", "last_peak", "last_alloc", "last_bytes", "last_chunks")


def register(app):
    state = {"sensor_errors": {}}
    app.metrics_state = state

    def handle(req):
        metrics = ondemand.load("metrics")
        sensors = ondemand.load("sensors")
        try:
            sens = sensors.Sensors(app.board, app.defn or {})
            errs = state["sensor_errors"]
            for k in sens.errors:
                errs[k] = errs.get(k, 0) + sens.errors[k]
            sens.errors = errs
            r = metrics.Renderer(app, sens)
            for k in _KEPT:
                if k in state:
                    setattr(r, k, state[k])
            gc.collect()  # the heap figures and the render's high-water mark start from live data
            out = r.new_out(req.chunk_view(), req.chunk_prepared)
            n = r.render(out)
            for k in _KEPT:
                state[k] = getattr(r, k)
            return {"bytes": n, "chunks": out.chunks}
        finally:
            # No stale reference to the renderer or its modules left in this frame
            # (the collector scans the stack conservatively).
            metrics = sensors = sens = r = out = None
            ondemand.drop("metrics")
            ondemand.drop("sensors")

    app.dispatch.register("metrics", PUBLIC, handle)
