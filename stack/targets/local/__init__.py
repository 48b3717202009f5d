"""The local target: replicas as `python -m serving` processes behind a real Traefik, run by a supervisor."""
