"""The proxy: OpenAI- and Anthropic-compatible endpoints in front of the configured providers."""

from gatewatch.proxy.handler import ProxyHandler, match_proxy_path

__all__ = ["ProxyHandler", "match_proxy_path"]
