"""The `metrics` command (public): this BMC's OpenMetrics text, in chunks.

The text is rendered straight into the frame writer's payload buffer and each
full buffer goes out as one chunk frame: no copy of the whole exposition is
ever held (see `bmc.metrics`). The response says how much was sent.
"""

import gc

from bmc import metrics, sensors
from bmc.dispatch import PUBLIC


def register(app):
    sn = sensors.Sensors(app.board, app.defn or {})
    renderer = metrics.Renderer(app, sn)
    app.sensors = sn
    app.metrics = renderer

    def handle(req):
        gc.collect()  # the heap figures and the render's high-water mark start from live data
        out = metrics.Out(req.chunk_view(), req.chunk_prepared)
        n = renderer.render(out)
        return {"bytes": n, "chunks": out.chunks, "content_type": metrics.CONTENT_TYPE}

    app.dispatch.register("metrics", PUBLIC, handle)
