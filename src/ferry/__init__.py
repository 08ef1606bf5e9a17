"""ferry: a store-and-forward HTTPS message broker on Redis."""

__version__ = "0.1.0"
