"""kubecc: compile one cluster description into per-node cloud-init user-data."""

__version__ = "0.1.0"
