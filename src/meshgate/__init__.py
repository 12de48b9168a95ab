"""meshgate: API gateway and service mesh data plane."""

__version__ = "0.1.0"
