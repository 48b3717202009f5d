"""The control plane: `stack.yaml` in, running prediction APIs out.

Imports point down: `serving` (the replica runtime) < `spec` (stack.yaml, validated) < `plan` (what a
version and an image are, the typed Plan) < the shared building blocks at this package's root (atomic
files, errors, the project's files, routes as data, status, splitters, TLS, traffic numbers) < `control`
(everything that runs inside a stack's controller) < `targets` (one package per target, in one table) <
`cli` (the `stack` command, and what only it uses).
"""

__version__ = "0.1.0"
