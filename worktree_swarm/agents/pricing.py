"""Dollars from token counts, for the clients that report only tokens (the Messages API does;
the Claude Code CLI reports its own total_cost_usd)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    input: float            # USD per million input tokens
    output: float           # USD per million output tokens

    def cost(self, *, input_tokens: int, output_tokens: int, cache_write_tokens: int = 0,
             cache_read_tokens: int = 0) -> float:
        # Cache writes cost 1.25x input, cache reads 0.1x (Anthropic's published multipliers).
        return (input_tokens * self.input + cache_write_tokens * self.input * 1.25
                + cache_read_tokens * self.input * 0.1 + output_tokens * self.output) / 1_000_000


# Published list prices per family; a model name is priced by the family it names.
FAMILIES: dict[str, Price] = {
    "opus": Price(input=5.0, output=25.0),
    "sonnet": Price(input=3.0, output=15.0),
    "haiku": Price(input=1.0, output=5.0),
}
# Opus before 4.5 (claude-opus-4-1, claude-opus-4-20250514, claude-3-opus) cost three times as much.
LEGACY_OPUS = Price(input=15.0, output=75.0)
_LEGACY_OPUS_NAME = re.compile(r"3-opus|opus-4(?:$|-(?:0|1|20\d{6})(?:$|[-@:]))")
# A model of a family this table does not know is priced as the most expensive one, so a spending
# limit errs on the side of stopping early.
UNKNOWN = Price(input=15.0, output=75.0)


def price_of(model: str) -> Price:
    name = model.lower()
    if _LEGACY_OPUS_NAME.search(name):
        return LEGACY_OPUS
    return next((price for family, price in FAMILIES.items() if family in name), UNKNOWN)


def cost_usd(model: str, *, input_tokens: int, output_tokens: int, cache_write_tokens: int = 0,
             cache_read_tokens: int = 0) -> float:
    return price_of(model).cost(input_tokens=input_tokens, output_tokens=output_tokens,
                                cache_write_tokens=cache_write_tokens, cache_read_tokens=cache_read_tokens)
