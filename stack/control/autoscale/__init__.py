"""The autoscaler: replica counts follow the in-flight requests, on every target."""
