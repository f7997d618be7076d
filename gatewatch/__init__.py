"""gatewatch: a self-hosted LLM gateway that records, meters and limits every request."""

__version__ = "0.1.0"
__all__ = ["__version__"]
