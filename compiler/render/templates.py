"""Template rendering: the one Jinja2 environment that turns templates/ into file text.

Reads no description field and writes no node path itself: renderers pass it values computed
from the plan. Every interpolated value goes through a filter of compiler.escape (`haproxy`,
`shell`, `systemd`, `toml`, `yaml`), and StrictUndefined turns a missing value into an error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jinja2

from compiler.errors import ConsistencyError
from compiler.escape import haproxy_word, shell_quote, systemd_quote, toml_value, yaml_scalar
from compiler.resources import resource_path

Filter = Callable[[Any], str]


def strict_filter(quote: Filter) -> Filter:
    """Wrap a filter so that a missing value fails with Jinja's own "is undefined" message."""

    @functools.wraps(quote)
    def apply(value: Any) -> str:
        if isinstance(value, jinja2.Undefined):
            # Converting a StrictUndefined raises UndefinedError naming the missing value.
            str(value)
        return quote(value)

    return apply


FILTERS: dict[str, Filter] = {
    "haproxy": strict_filter(haproxy_word),
    "shell": strict_filter(shell_quote),
    "systemd": strict_filter(systemd_quote),
    "toml": strict_filter(toml_value),
    "yaml": strict_filter(yaml_scalar),
}


@functools.cache
def template_environment() -> jinja2.Environment:
    """Build the process-wide environment; the loader caches parsed templates in it."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(resource_path("templates")),
        undefined=jinja2.StrictUndefined,
        # Autoescaping is for HTML; each value is quoted for its target format by a filter.
        autoescape=False,
        keep_trailing_newline=True,
        # Block tags on their own line leave no blank line or indentation behind.
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(FILTERS)
    return environment


def render_template(name: str, **values: Any) -> str:
    """Render templates/<name> with the given values.

    A missing value, a template error or a value its filter cannot quote is a kubecc bug by
    the time rendering runs, so it raises ConsistencyError naming the template.
    """
    try:
        return template_environment().get_template(name).render(**values)
    except (jinja2.TemplateError, ValueError, TypeError) as err:
        raise ConsistencyError(f"rendering template {name} failed: {err}") from err
