"""The single-box target: Docker Compose on a real engine (target), its autoscaler's scaler, logs."""
