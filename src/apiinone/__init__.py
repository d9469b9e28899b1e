"""apiinone: one HTTP API, one API key and one credit balance in front of many AI models."""

__version__ = "0.1.0"
__all__ = ["__version__"]
