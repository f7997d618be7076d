"""Which upstream a request goes to: endpoints, model aliases with failover targets (§P6, §G)."""

from __future__ import annotations

from dataclasses import dataclass

from gatewatch.proxy.errors import Family, GatewayError
from gatewatch.settings import ProviderSettings, Settings

__all__ = ["ENDPOINTS", "Endpoint", "Router", "Target", "match_proxy_path", "upstream_url"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str  # e.g. /v1/chat/completions
    family: Family
    kind: str  # chat | responses | embeddings | models | messages | count_tokens
    method: str = "POST"
    requires: tuple[str, ...] = ("model",)


ENDPOINTS: dict[str, Endpoint] = {
    e.path: e
    for e in (
        Endpoint("/v1/chat/completions", "openai", "chat", requires=("model", "messages")),
        Endpoint("/v1/responses", "openai", "responses", requires=("model", "input")),
        Endpoint("/v1/embeddings", "openai", "embeddings", requires=("model", "input")),
        Endpoint("/v1/models", "openai", "models", method="GET", requires=()),
        Endpoint("/v1/messages", "anthropic", "messages", requires=("model", "messages")),
        Endpoint(
            "/v1/messages/count_tokens", "anthropic", "count_tokens", requires=("model", "messages")
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Target:
    provider: ProviderSettings
    model: str

    @property
    def key(self) -> str:
        return f"{self.provider.name}/{self.model}"


_FAMILY_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic"}


class Router:
    def __init__(self, settings: Settings) -> None:
        self.providers = {p.name: p for p in settings.providers}
        self.aliases: dict[str, list[Target]] | None = None
        if settings.models is not None:
            self.aliases = {}
            for alias, targets in settings.models.items():
                resolved = []
                for t in targets:
                    name, _, model = t.partition("/")
                    resolved.append(Target(self.providers[name], model))
                self.aliases[alias] = resolved
        self.first: dict[str, ProviderSettings] = {}
        for p in settings.providers:
            self.first.setdefault(p.family, p)

    def resolve(self, family: Family, model: str, provider_name: str | None) -> list[Target]:
        """Ordered targets for a model name; raises a 404 GatewayError when there are none."""
        if provider_name is not None:
            provider = self.providers.get(provider_name)
            if provider is None:
                raise GatewayError(
                    404, f"no provider named {provider_name!r} is configured", "provider_not_found"
                )
            return [Target(provider, model)]
        if self.aliases is not None:
            targets = self.aliases.get(model)
            if targets is None:
                raise GatewayError(
                    404,
                    f"model {model!r} is not configured on this gateway"
                    f" (available: {', '.join(sorted(self.aliases)) or 'none'})",
                    "model_not_found",
                )
            usable = [t for t in targets if t.provider.family == family]
            if not usable:
                raise GatewayError(
                    404,
                    f"model {model!r} is not served through the {_FAMILY_NAMES[family]} API"
                    f" on this gateway",
                    "model_not_found",
                )
            return usable
        provider = self.first.get(family)
        if provider is None:
            raise GatewayError(
                404,
                f"no {_FAMILY_NAMES[family]}-compatible provider is configured"
                f" (set {'ANTHROPIC' if family == 'anthropic' else 'OPENAI'}_API_KEY or add one"
                " under providers)",
                "provider_not_found",
            )
        return [Target(provider, model)]


def upstream_url(provider: ProviderSettings, path: str) -> str:
    """``path`` is the gateway path under /v1; OpenAI-style base URLs already end in /v1."""
    if provider.type == "anthropic":
        return provider.url + path
    return provider.url + path[3:]


def match_proxy_path(path: str) -> tuple[Endpoint, str | None] | None:
    """``/v1/…`` or ``/{provider}/v1/…`` → (endpoint, provider name or None). The name is all
    before ``/v1/``, so a path with an encoded ``/`` in it still gets the family's 404."""
    endpoint = ENDPOINTS.get(path)
    if endpoint is not None:
        return endpoint, None
    cut = path.find("/v1/", 1)
    if cut > 0:
        endpoint = ENDPOINTS.get(path[cut:])
        if endpoint is not None:
            return endpoint, path[1:cut]
    return None
