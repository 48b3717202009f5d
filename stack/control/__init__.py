"""The stack's control plane: one runtime, composed once (runtime), from small protocols.

    runtime   ControlPlane: autoscaler, canaries, activator, the gateway's own errors, the
              controller's /metrics; Adapters: what a target contributes (fleet, scaler, waker,
              signal, metrics, stores, route sink)
    routing   the gateway's routes as data (GatewayRoutes) and where they go (RouteSink)

It imports no target: `stack.targets.open_control` picks a target's adapters.
"""
