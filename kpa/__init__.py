"""kpa: explain what a Kubernetes node's netfilter does to a packet, and why."""

__version__ = "0.1.0"
