"""The `metrics` command (public): this BMC's OpenMetrics text, in chunks.

The text is rendered straight into the frame writer's payload buffer and each
full buffer goes out as one chunk frame: no copy of the whole exposition is
ever held (see `bmc.metrics`). The response says how much was sent.

`bmc.metrics` and `bmc.sensors` are imported on the first request, not at
start: a BMC that is never scraped keeps that RAM for everything else, and a
heap too full to load them answers `internal: out of memory` instead of
failing to start.
"""

import gc

from bmc.dispatch import PUBLIC


def register(app):
    app.metrics = None
    app.sensors = None

    def renderer():
        if app.metrics is None:
            from bmc import metrics, sensors

            gc.collect()
            app.sensors = sensors.Sensors(app.board, app.defn or {})
            app.metrics = metrics.Renderer(app, app.sensors)
        return app.metrics

    def handle(req):
        r = renderer()
        gc.collect()  # the heap figures and the render's high-water mark start from live data
        out = r.new_out(req.chunk_view(), req.chunk_prepared)
        n = r.render(out)
        return {"bytes": n, "chunks": out.chunks}

    app.dispatch.register("metrics", PUBLIC, handle)
