"""Everything that runs inside a stack's controller: one runtime, composed once, from small protocols.

    runtime         ControlPlane: composes the parts below; Adapters: what a target contributes (its fleet,
                    scaler, waker, signal, metrics, stores, route sink); run_control
    routing         the gateway's routes as data (GatewayRoutes) and where they go (RouteSink)
    liveness        every replica's /healthz asked over HTTP: ready, alive, stuck or unhealthy
    autoscale/      the autoscaler: its policy (a pure function), its signal, its loop, the simulator
    activator       holds requests for an API scaled to zero while a replica starts
    gateway_errors  the gateway's own answers as JSON (and the activator's and the jobs' routes)
    canary          progressive delivery: the canary runner and its judge
    canary_sources  the metrics a canary is judged on (Prometheus, or the replicas scraped)
    batch/          BatchAPI jobs: submission, the queue, the workers' protocol
    dashboard/      the read-only page the controller serves, and the proxy that publishes it

It imports no target: each target's `adapters` module (stack.targets.<name>.adapters) makes its part, and
`stack.targets.open_control` picks them from the targets' table.
"""
