"""The proxy: OpenAI- and Anthropic-compatible endpoints in front of the configured providers
(``gatewatch.proxy.handler``)."""
