"""The control plane: `stack.yaml` in, running prediction APIs out."""

__version__ = "0.1.0"
