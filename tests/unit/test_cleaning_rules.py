"""Cleaning rules: names, values, per-tenant non-finite and range actions, limits."""

from __future__ import annotations

import math
import struct
import sys
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.cleaning.rules import (
    Action,
    Range,
    Rejected,
    RuleBook,
    TenantRules,
    clean_event,
    clean_features,
)

TS = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
DEFAULT = TenantRules()


def raw(**features) -> dict:
    return {"event_id": "e1", "tenant": "acme", "source": "test", "ts": TS, "features": features, "label": None}


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_finite_doubles_pass_through_bit_exact(value: float) -> None:
    cleaned = clean_features({"x": value}, DEFAULT)["x"]
    assert struct.pack(">d", cleaned) == struct.pack(">d", value)


@pytest.mark.parametrize(
    ("name", "normal"),
    [
        (" Unit Price (EUR) ", "unit_price_eur"),
        ("user-id", "user_id"),
        ("a.b.c", "a_b_c"),
        ("ÄGE", "äge"),
        ("ｗｉｄｔｈ", "width"),  # full-width letters fold under NFKC
        ("__x__", "x"),
    ],
)
def test_feature_names_are_normalised(name: str, normal: str) -> None:
    assert list(clean_features({name: 1.0}, DEFAULT)) == [normal]


def test_names_that_collide_reject_the_event_naming_both() -> None:
    with pytest.raises(Rejected, match="'Age' and 'age ' both normalise to 'age'") as info:
        clean_features({"Age": 1.0, "age ": 2.0}, DEFAULT)
    assert info.value.rule == "feature_name"


def test_a_name_with_no_word_characters_is_rejected() -> None:
    with pytest.raises(Rejected, match="'!!!' is empty") as info:
        clean_features({"!!!": 1.0}, DEFAULT)
    assert info.value.rule == "feature_name"


@pytest.mark.parametrize(
    ("text", "value"),
    [("12.5", 12.5), (" -3 ", -3.0), ("1e3", 1000.0), (".5", 0.5), ("0.1", 0.1), ("007", 7.0)],
)
def test_numeric_strings_become_the_correctly_rounded_double(text: str, value: float) -> None:
    assert clean_features({"x": text}, DEFAULT) == {"x": value}


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("FALSE", False), ("Yes", True), ("no", False), ("on", True), ("off", False), ("T", True)],
)
def test_boolean_strings_become_booleans(text: str, value: bool) -> None:
    assert clean_features({"flag": text}, DEFAULT) == {"flag": value}


def test_other_strings_are_trimmed_nfc_strings_and_missing_values_are_dropped() -> None:
    cleaned = clean_features({"city": "  Cafe\u0301 ", "none": None, "blank": "   ", "b": True}, DEFAULT)
    assert cleaned == {"city": "Caf\u00e9", "b": True}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "NaN", "-Infinity", "inf"])
def test_non_finite_drops_the_event_by_default(value) -> None:
    with pytest.raises(Rejected, match="feature 'x' is") as info:
        clean_features({"x": value}, DEFAULT)
    assert info.value.rule == "non_finite"


def test_non_finite_drop_feature_keeps_the_rest() -> None:
    rules = TenantRules(non_finite=Action.DROP_FEATURE)
    assert clean_features({"x": math.nan, "y": 2.0}, rules) == {"y": 2.0}


def test_clamp_maps_infinities_to_the_range_and_drops_nan() -> None:
    rules = TenantRules(non_finite=Action.CLAMP, ranges={"x": Range(low=-1, high=1)})
    assert clean_features({"x": math.inf}, rules) == {"x": 1.0}
    assert clean_features({"x": -math.inf}, rules) == {"x": -1.0}
    assert clean_features({"x": math.nan}, rules) == {}
    assert clean_features({"y": math.inf}, rules) == {"y": sys.float_info.max}  # unbounded feature


def test_out_of_range_actions() -> None:
    ranges = {"age": Range(low=0, high=130)}
    with pytest.raises(Rejected, match=r"feature 'age' = 200.0 is outside \[0.0, 130.0\]") as info:
        clean_features({"age": 200.0}, TenantRules(ranges=ranges))
    assert info.value.rule == "out_of_range"
    assert clean_features({"age": 200.0}, TenantRules(ranges=ranges, out_of_range=Action.CLAMP)) == {"age": 130.0}
    assert clean_features({"age": -5.0}, TenantRules(ranges=ranges, out_of_range=Action.CLAMP)) == {"age": 0.0}
    assert clean_features({"age": 200.0}, TenantRules(ranges=ranges, out_of_range=Action.DROP_FEATURE)) == {}
    assert clean_features({"age": 130.0}, TenantRules(ranges=ranges)) == {"age": 130.0}  # bounds are inclusive


def test_rules_are_per_tenant() -> None:
    book = RuleBook(tenants={"lenient": TenantRules(non_finite=Action.DROP_FEATURE)})
    event = raw(x=math.nan, y=1.0)
    assert clean_event({**event, "tenant": "lenient"}, book.for_tenant("lenient"))["features"] == {"y": 1.0}
    with pytest.raises(Rejected):
        clean_event(event, book.for_tenant("acme"))


def test_limits_reject_with_the_limit_named() -> None:
    rules = TenantRules(max_features=3, max_string_length=5)
    with pytest.raises(Rejected, match="features has 4 entries, over the limit of 3"):
        clean_features({f"f{i}": 1.0 for i in range(4)}, rules)
    with pytest.raises(Rejected, match="feature 's' is a string of 6 characters") as info:
        clean_features({"s": "abcdef"}, rules)
    assert info.value.rule == "string_too_long"


def test_label_is_normalised_and_a_non_finite_label_rejects() -> None:
    assert clean_event({**raw(), "label": "yes"}, DEFAULT)["label"] is True
    assert clean_event({**raw(), "label": "0.25"}, DEFAULT)["label"] == 0.25
    assert clean_event({**raw(), "label": "spam"}, DEFAULT)["label"] == "spam"
    with pytest.raises(Rejected, match="label is nan"):
        clean_event({**raw(), "label": math.nan}, DEFAULT)


def test_an_empty_event_id_is_rejected() -> None:
    with pytest.raises(Rejected, match="event_id is empty"):
        clean_event({**raw(), "event_id": " "}, DEFAULT)


def test_bad_configuration_names_the_field() -> None:
    with pytest.raises(ValidationError, match="non_finite"):
        TenantRules(non_finite="explode")
    with pytest.raises(ValidationError, match="low=2.0 must be <= high=1.0"):
        Range(low=2, high=1)
    with pytest.raises(ValidationError, match="unknown_option"):
        RuleBook.model_validate({"default": {"unknown_option": 1}})
