"""The stack's live dashboard: one read-only page the controller serves (`stack dashboard` prints its URL).

data     the page's one JSON document: each API's numbers now (the same queries as `stack status`)
         and its last 15 minutes from Prometheus' query_range, the autoscaler's decisions,
         the splitters and canaries, GPU use
web      the routes on the controller's HTTP endpoint: /dashboard/, its files, /dashboard/data.json
proxy    Compose: the controller holds the Docker socket and publishes no port; a socket-less
         container forwards the dashboard's GETs to it from 127.0.0.1
static/  the page (HTML, CSS, JavaScript with its own SVG charts): no build step, nothing from a CDN
"""
