"""Cleaning rules: one RawEvent in, one CleanEvent record out, or `Rejected` naming why.

Pure functions over dicts (no Kafka, no Avro), configured per tenant:

    book = RuleBook(default=TenantRules(non_finite="drop_feature"),
                    tenants={"acme": TenantRules(ranges={"age": Range(low=0, high=130)},
                                                 out_of_range="clamp")})
    clean = clean_event(raw_record, book.for_tenant(raw_record["tenant"]))

What the rules do, in order:
- feature names: NFKC, case-folded, trimmed, every run of non-word characters becomes
  one "_"; an empty name, an over-long name or two names that collide is `Rejected`.
- null values and empty strings are missing values: the feature is dropped.
- strings that spell a number become doubles (float parsing is exact, correctly rounded);
  strings that spell a boolean (true/false, yes/no, on/off, t/f, y/n) become booleans;
  other strings are trimmed and NFC-normalised and stay strings.
- doubles that are finite and in range pass through unchanged, bit for bit.
- NaN/Infinity and values outside the tenant's range follow the tenant's action:
  drop the feature, drop the event (`Rejected` with the rule and the feature), or clamp
  to the range (NaN cannot be clamped: its feature is dropped).
- the label gets the same value normalisation; a non-finite label rejects the event.
"""

from __future__ import annotations

import functools
import math
import re
import sys
import unicodedata
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Action(StrEnum):
    """What to do with a value a rule does not accept."""

    DROP_FEATURE = "drop_feature"
    DROP_EVENT = "drop_event"
    CLAMP = "clamp"


class Range(BaseModel):
    """Closed interval a feature's double must lie in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float = -math.inf
    high: float = math.inf

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if math.isnan(self.low) or math.isnan(self.high) or self.low > self.high:
            raise ValueError(f"range low={self.low} must be <= high={self.high} (and not NaN)")
        return self


class TenantRules(BaseModel):
    """The cleaning configuration of one tenant (or the default for all tenants)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    non_finite: Action = Action.DROP_EVENT
    """For NaN, +Infinity and -Infinity values (doubles or strings such as "NaN")."""
    out_of_range: Action = Action.DROP_EVENT
    """For finite doubles outside the feature's range."""
    ranges: dict[str, Range] = Field(default_factory=dict)
    """Per normalised feature name; features without one use `default_range`."""
    default_range: Range = Range()
    max_features: int = Field(1000, gt=0)
    max_name_length: int = Field(128, gt=0)
    max_string_length: int = Field(4096, gt=0)

    def range_for(self, feature: str) -> Range:
        return self.ranges.get(feature, self.default_range)


class RuleBook(BaseModel):
    """Default rules plus per-tenant overrides (a tenant's entry replaces the default whole)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: TenantRules = TenantRules()
    tenants: dict[str, TenantRules] = Field(default_factory=dict)

    def for_tenant(self, tenant: str) -> TenantRules:
        return self.tenants.get(tenant, self.default)


class Rejected(ValueError):
    """The event breaks a rule; `rule` is the dead-letter reason code, the message names the field."""

    def __init__(self, rule: str, message: str) -> None:
        self.rule = rule
        super().__init__(message)


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_BOOLEANS = {
    "true": True, "t": True, "yes": True, "y": True, "on": True,
    "false": False, "f": False, "no": False, "n": False, "off": False,
}
_NOT_WORD = re.compile(r"\W+")
_MISSING = object()


def normalise_name(name: str, rules: TenantRules) -> str:
    """The feature name as CleanEvent carries it, e.g. " Unit Price (EUR)" -> "unit_price_eur"."""
    normal = _normal_name(name)
    if not normal:
        raise Rejected("feature_name", f"feature name {name!r} is empty once normalised")
    if len(normal) > rules.max_name_length:
        raise Rejected(
            "feature_name",
            f"feature name {name[:40]!r}... is {len(normal)} characters, over the limit of {rules.max_name_length}",
        )
    return normal


@functools.lru_cache(maxsize=65536)
def _normal_name(name: str) -> str:
    """NFKC, case-folded, runs of non-word characters as one `_`: a pure function of the name, and
    a stream repeats the same few names, so it is remembered (bounded)."""
    return _NOT_WORD.sub("_", unicodedata.normalize("NFKC", name).casefold()).strip("_")


def normalise_value(value: Any, feature: str | None, rules: TenantRules) -> Any:
    """A typed value (double, bool or NFC string), or `_MISSING` for null and empty strings.
    `feature` is the feature's name as it arrived, None for the label (errors name it)."""
    if value is None:
        return _MISSING
    if isinstance(value, (bool, float)):
        return value  # doubles are returned as the same object: bit-exact by construction
    if isinstance(value, int):  # not in the Avro union, but a dict from a test or JSON may hold one
        return float(value)
    if not isinstance(value, str):
        raise Rejected("invalid_type", f"{_field(feature)} has type {type(value).__name__}, not double, string or boolean")
    return _normalise_text(value, feature, rules)


def _normalise_text(value: str, feature: str | None, rules: TenantRules) -> Any:
    """`normalise_value` of a string."""
    text = (value if value.isascii() else unicodedata.normalize("NFC", value)).strip()
    if not text:
        return _MISSING
    if len(text) > rules.max_string_length:
        raise Rejected(
            "string_too_long",
            f"{_field(feature)} is a string of {len(text)} characters, over the limit of {rules.max_string_length}",
        )
    if _NUMBER.fullmatch(text) or _NON_FINITE.fullmatch(text):
        return float(text)
    boolean = _BOOLEANS.get(text.lower())
    return text if boolean is None else boolean


def _field(feature: str | None) -> str:
    """The value's name in an error (built only for one)."""
    return "label" if feature is None else f"feature {feature!r}"


def _apply_range(value: float, feature: str, rules: TenantRules) -> float | object:
    """`value` if acceptable, a clamped double, or `_MISSING` to drop the feature."""
    bounds = rules.range_for(feature)
    if math.isnan(value) or math.isinf(value):
        action, what = rules.non_finite, f"is {value!r}"
        rule = "non_finite"
    elif value < bounds.low or value > bounds.high:
        action, what = rules.out_of_range, f"= {value!r} is outside [{bounds.low}, {bounds.high}]"
        rule = "out_of_range"
    else:
        return value
    if action is Action.DROP_EVENT:
        raise Rejected(rule, f"feature {feature!r} {what}")
    if action is Action.DROP_FEATURE or math.isnan(value):
        return _MISSING
    high = bounds.high if math.isfinite(bounds.high) else sys.float_info.max
    low = bounds.low if math.isfinite(bounds.low) else -sys.float_info.max
    return min(max(value, low), high)


def clean_features(features: Mapping[str, Any], rules: TenantRules) -> dict[str, float | str | bool]:
    if len(features) > rules.max_features:
        raise Rejected(
            "too_many_features", f"features has {len(features)} entries, over the limit of {rules.max_features}"
        )
    out: dict[str, float | str | bool] = {}
    original_of: dict[str, str] = {}
    # The per-event loop of the cleaning service: the common cases (a cached name within the
    # limit, a finite double inside its range, a null) are written out here; everything else,
    # errors included, goes through the functions above.
    max_name_length, ranges, default_range = rules.max_name_length, rules.ranges, rules.default_range
    for name, raw_value in features.items():
        feature = _normal_name(name) if type(name) is str else ""
        if not feature or len(feature) > max_name_length:
            feature = normalise_name(name, rules)
        if feature in original_of:
            raise Rejected(
                "feature_name",
                f"feature names {original_of[feature]!r} and {name!r} both normalise to {feature!r}",
            )
        original_of[feature] = name
        if type(raw_value) is float:
            bounds = ranges.get(feature, default_range)
            if raw_value - raw_value == 0.0 and bounds.low <= raw_value <= bounds.high:  # finite, in range
                out[feature] = raw_value
                continue
            value = raw_value
        elif raw_value is None:
            continue
        elif type(raw_value) is str:
            value = _normalise_text(raw_value, name, rules)
        else:
            value = normalise_value(raw_value, name, rules)
        if isinstance(value, float):
            value = _apply_range(value, feature, rules)
        if value is not _MISSING:
            out[feature] = value
    return out


def clean_label(label: Any, rules: TenantRules) -> float | str | bool | None:
    value = normalise_value(label, None, rules)
    if value is _MISSING:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise Rejected("non_finite", f"label is {value!r}")
    return value


def clean_event(raw: Mapping[str, Any], rules: TenantRules) -> dict[str, Any]:
    """The CleanEvent fields a RawEvent maps to (without content_hash and raw position)."""
    for field in ("event_id", "tenant", "source"):
        if not str(raw.get(field) or "").strip():
            raise Rejected("missing_field", f"{field} is empty")
    return {
        "event_id": raw["event_id"],
        "tenant": raw["tenant"],
        "source": raw["source"],
        "ts": raw["ts"],
        "features": clean_features(raw.get("features") or {}, rules),
        "label": clean_label(raw.get("label"), rules),
    }
