"""Cost of a request from the maintained price table (genai-prices), overridable per model.

Looking a model up in the table costs tens of microseconds, so each (provider, model) is resolved
once into plain per-token rates and cached."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gatewatch.settings import PriceOverride, ProviderSettings

__all__ = ["PriceBook", "Rates", "Usage", "warm_price_table"]

log = logging.getLogger("gatewatch.pricing")
_PER_MTOK = 1e-6
_PRICE_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic"}


@dataclass(slots=True)
class Usage:
    """Token counts as the gateway stores them: ``input_tokens`` includes cached input
    (read and written), ``output_tokens`` includes reasoning."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class _Tiered:
    base: float
    tiers: tuple[tuple[int, float], ...] = ()  # (input tokens above which, rate)

    def at(self, input_tokens: int) -> float:
        rate = self.base
        for start, tier_rate in self.tiers:
            if input_tokens > start:
                rate = tier_rate
        return rate


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per token."""

    input: _Tiered
    output: _Tiered
    cache_read: _Tiered
    cache_write: _Tiered
    reasoning: _Tiered

    def cost(self, u: Usage) -> float | None:
        """The price of the counts reported: a count that is None (the provider left it out)
        adds nothing, so the result is never above the real cost; None when neither input
        nor output is known."""
        if u.input_tokens is None and u.output_tokens is None:
            return None
        total_in = u.input_tokens or 0
        cache_read = u.cache_read_tokens or 0
        cache_write = u.cache_write_tokens or 0
        out = u.output_tokens or 0
        reasoning = min(u.reasoning_tokens or 0, out)
        fresh_in = max(total_in - cache_read - cache_write, 0)
        return round(
            fresh_in * self.input.at(total_in)
            + cache_read * self.cache_read.at(total_in)
            + cache_write * self.cache_write.at(total_in)
            + (out - reasoning) * self.output.at(total_in)
            + reasoning * self.reasoning.at(total_in),
            10,
        )


def _tiered(value: Any, fallback: _Tiered | None) -> _Tiered | None:
    if value is None:
        return fallback
    base = getattr(value, "base", value)
    tiers = tuple(
        (int(t.start), float(t.price) * _PER_MTOK) for t in getattr(value, "tiers", ()) or ()
    )
    return _Tiered(float(base) * _PER_MTOK, tiers)


def _from_override(o: PriceOverride) -> Rates:
    inp = _Tiered(o.input * _PER_MTOK)
    out = _Tiered(o.output * _PER_MTOK)
    return Rates(
        input=inp,
        output=out,
        cache_read=_Tiered(o.cache_read * _PER_MTOK) if o.cache_read is not None else inp,
        cache_write=_Tiered(o.cache_write * _PER_MTOK) if o.cache_write is not None else inp,
        reasoning=_Tiered(o.reasoning * _PER_MTOK) if o.reasoning is not None else out,
    )


def warm_price_table() -> None:
    """Load the table at start, not on the first priced request (it takes tens of ms)."""
    from genai_prices import data_snapshot

    data_snapshot.get_snapshot()


class PriceBook:
    def __init__(self, overrides: dict[str, PriceOverride]) -> None:
        self._overrides = {k: _from_override(v) for k, v in overrides.items()}
        self._cache: dict[tuple[str, str, str | None], Rates | None] = {}

    def rates(
        self, provider: ProviderSettings, model: str, fallback: str | None = None
    ) -> Rates | None:
        """Rates for the model that answered; ``fallback`` is the model the gateway asked for.
        A configured override for either name wins over the table; the table is asked for the
        answered name (a dated snapshot, say), then for the requested one."""
        key = (provider.name, model, fallback)
        try:
            return self._cache[key]
        except KeyError:
            pass
        names = [model] if not fallback or fallback == model else [model, fallback]
        rates = None
        for name in names:
            rates = self._overrides.get(f"{provider.name}/{name}") or self._overrides.get(name)
            if rates is not None:
                break
        else:
            for name in names:
                rates = self._from_table(provider, name)
                if rates is not None:
                    break
        if len(self._cache) > 10_000:  # bounded: model names come from upstream answers
            self._cache.clear()
        self._cache[key] = rates
        return rates

    def cost(
        self, provider: ProviderSettings, model: str | None, usage: Usage, fallback: str | None
    ) -> float | None:
        name = model or fallback
        if not name:
            return None
        rates = self.rates(provider, name, fallback)
        return None if rates is None else rates.cost(usage)

    @staticmethod
    def _from_table(provider: ProviderSettings, model: str) -> Rates | None:
        provider_id = provider.pricing_provider or _PRICE_PROVIDER_IDS.get(provider.type)
        if provider_id is None:
            return None
        try:
            from genai_prices import data_snapshot

            _, info = data_snapshot.get_snapshot().find_provider_model(
                model, None, provider_id, None
            )
            price = info.get_prices(datetime.now(UTC))
        except LookupError:
            return None
        except Exception:  # the table is a convenience: never fail a request over it
            log.exception("price look-up failed for %s/%s", provider.name, model)
            return None
        inp = _tiered(price.input_mtok, None)
        if inp is None:
            return None
        out = _tiered(price.output_mtok, None) or _Tiered(0.0)  # embeddings: input only
        return Rates(
            input=inp,
            output=out,
            cache_read=_tiered(price.cache_read_mtok, inp) or inp,
            cache_write=_tiered(price.cache_write_mtok, inp) or inp,
            reasoning=out,
        )
