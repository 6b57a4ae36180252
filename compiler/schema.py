"""First validation layer: the description against `schemas/cluster.schema.json`.

Every schema error becomes a Problem with the dotted path, what was found and what is
expected; an unknown key gets a "did you mean" hint.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from typing import Any, cast

import jsonschema
from jsonschema.exceptions import ValidationError

from compiler.errors import DescriptionError, Problem
from compiler.loader import Description, PathPart
from compiler.resources import resource_path

JSON_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


@cache
def load_cluster_schema() -> dict[str, Any]:
    with resource_path("schemas", "cluster.schema.json").open(encoding="utf-8") as stream:
        schema: dict[str, Any] = json.load(stream)
    return schema


# Fields whose value may be a secret: an error names the field, never the value.
SECRET_FIELDS = frozenset({"passwordHash"})


def may_be_secret(parts: tuple[PathPart, ...], value: Any) -> bool:
    """Return True for a password field or text that looks like a pasted private key."""
    named = any(part in SECRET_FIELDS for part in parts if isinstance(part, str))
    return named or (isinstance(value, str) and "PRIVATE KEY" in value)


def describe_value(value: Any, parts: tuple[PathPart, ...] = ()) -> str:
    """Describe a value for 'found ...': short, quoted, never a whole subtree or a secret."""
    if may_be_secret(parts, value):
        return "a value (not shown because it may be secret)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return json.dumps(text)
    if isinstance(value, int | float):
        return str(value)
    return f"a {type(value).__name__} value ({value})"


def _expected_type(schema_type: str | list[str]) -> str:
    types = [schema_type] if isinstance(schema_type, str) else schema_type
    return " or ".join(JSON_TYPE_NAMES.get(name, name) for name in types)


def _unknown_key_problems(
    error: ValidationError, parts: tuple[PathPart, ...], description: Description
) -> list[Problem]:
    known = sorted(_schema_of(error).get("properties", {}))
    instance: dict[str, Any] = cast(dict[str, Any], error.instance)
    extra = sorted(set(instance) - set(known))
    problems = []
    for key in extra:
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        hint = f'did you mean "{close[0]}"?' if close else "remove it"
        problems.append(description.problem(
            (*parts, key), f'found unknown key "{key}"; expected one of: {", ".join(known)}',
            hint, at_key=True,
        ))
    return problems


def _schema_of(error: ValidationError) -> dict[str, Any]:
    """Return the failing subschema; kubecc's schema never uses boolean subschemas."""
    return cast(dict[str, Any], error.schema)


def _one_of_message(error: ValidationError) -> str:
    expected = _schema_of(error).get("x-expected", "a valid value")
    found = describe_value(error.instance, tuple(error.absolute_path))
    return f"found {found}; expected {expected}"


BOUND_VALIDATORS = frozenset(
    {"minimum", "maximum", "minItems", "maxItems", "minLength", "maxLength"}
)


def _bound_message(validator: str, value: str, instance: Any, limit: int) -> str:
    """Return the message of a failed minimum, maximum, item-count or length bound."""
    bound = "at least" if validator.startswith("min") else "at most"
    if validator in ("minItems", "maxItems"):
        noun = "item" if limit == 1 else "items"
        return f"found {len(instance)} items; expected {bound} {limit} {noun}"
    if validator in ("minLength", "maxLength"):
        return (f"found {value} ({len(instance)} characters); expected {bound} {limit} "
                "characters")
    return f"found {value}; expected {bound} {limit}"


def _message(error: ValidationError) -> tuple[str, str | None]:
    """Return (message, hint) for one schema error."""
    value = describe_value(error.instance, tuple(error.absolute_path))
    validator = error.validator
    schema = _schema_of(error)
    instance: Any = error.instance

    if validator == "type":
        return f"found {value}; expected {_expected_type(schema['type'])}", None
    if validator == "enum":
        # "x-rejected" values pass the schema only so that the semantic checks can explain why
        # they are rejected, so they are never offered.
        accepted = [option for option in schema["enum"] if option not in schema.get(
            "x-rejected", []
        )]
        options = ", ".join(json.dumps(option) for option in accepted)
        close = difflib.get_close_matches(str(instance), [str(o) for o in accepted], 1)
        return f"found {value}; expected one of {options}", (
            f'did you mean "{close[0]}"?' if close else None
        )
    if validator == "const":
        return f"found {value}; expected {json.dumps(schema['const'])}", None
    if validator == "required":
        missing = _missing_key(error)
        # "x-required-hint" replaces the generic hint where leaving the parent out is an option.
        hint = schema.get("x-required-hint", f'add "{missing}" here')
        return f'missing required key "{missing}"', hint
    if validator in BOUND_VALIDATORS:
        return _bound_message(validator, value, instance, schema[validator]), None

    if validator in ("pattern", "format", "anyOf"):
        # Each constrained property names its expectation in the "x-expected" annotation.
        return f"found {value}; expected {schema.get('x-expected', 'a valid value')}", None
    if validator == "oneOf":
        return _one_of_message(error), None
    return f"found {value}; {error.message}", None


def _best_errors(errors: list[ValidationError]) -> list[ValidationError]:
    """Replace oneOf/anyOf errors by their most specific branch error where one branch fits."""
    result = []
    for error in errors:
        if error.validator in ("oneOf", "anyOf") and error.context:
            same_type = [
                sub for sub in error.context
                if sub.validator != "type" and sub.relative_schema_path[0] in (0, 1)
            ]
            if same_type and error.validator == "oneOf":
                result.extend(_best_errors(same_type))
                continue
        result.append(error)
    return result


def validate_schema(description: Description) -> None:
    """Raise DescriptionError listing every schema problem of the description."""
    validator = jsonschema.Draft202012Validator(
        load_cluster_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    problems: list[Problem] = []
    errors = _best_errors(list(validator.iter_errors(description.data)))
    near_misses = _near_miss_keys(errors)
    for error in errors:
        if error.validator == "required" and (
            tuple(error.absolute_path), _missing_key(error)
        ) in near_misses:
            continue  # the unknown-key problem already contains "did you mean"
        parts = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            problems.extend(_unknown_key_problems(error, parts, description))
            continue
        message, hint = _message(error)
        problems.append(description.problem(parts, message, hint))
    if problems:
        raise DescriptionError(description.filename, _unique(problems))


def _missing_key(error: ValidationError) -> str:
    return str(error.message).split("'")[1]


def _near_miss_keys(errors: list[ValidationError]) -> set[tuple[tuple[PathPart, ...], str]]:
    """Return (mapping path, known key) pairs that an unknown key there nearly spells."""
    pairs = set()
    for error in errors:
        if error.validator != "additionalProperties" or not isinstance(error.instance, dict):
            continue
        known = list(_schema_of(error).get("properties", {}))
        for key in set(error.instance) - set(known):
            for close in difflib.get_close_matches(str(key), known, n=1, cutoff=0.6):
                pairs.add((tuple(error.absolute_path), close))
    return pairs


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    result = []
    for problem in problems:
        if (problem.path, problem.message) not in seen:
            seen.add((problem.path, problem.message))
            result.append(problem)
    return result
