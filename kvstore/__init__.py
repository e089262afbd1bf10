"""kvstore: a replicated key-value store built to run as a Kubernetes StatefulSet."""

__version__ = "0.1.0"
