"""Targets that run a planned stack: Compose on one box (compose), and the build step they share."""
