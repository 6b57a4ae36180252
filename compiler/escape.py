"""Escaping filters: one pure function per target format that templates interpolate into.

Reads nothing from the description and writes no node path. Every value that a template places
in a shell script, a systemd unit, a TOML file, an HAProxy configuration or a YAML scalar
passes through exactly one of these. So a value can never end a quoted word or add a line. A
value that the target grammar cannot carry raises ValueError.
"""

from __future__ import annotations

import re
import shlex

import yaml

# Characters that stay bare in a unit's command line: none of them is a quote, an escape, a
# specifier, a variable reference, whitespace or the ";" that separates commands.
_SYSTEMD_BARE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")

# systemd's C-style escapes (systemd.syntax, "Quoting"). Other control characters use \xNN.
_SYSTEMD_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}

# Characters of the HAProxy words kubecc writes (names, addresses, ports, paths): none of them
# is whitespace, a quote, a backslash, "#" or the "$" of environment expansion.
_HAPROXY_BARE = re.compile(r"[A-Za-z0-9_@:./-]+")

# TOML 1.0 basic strings: the short escapes, then \uXXXX for the other control characters.
_TOML_ESCAPES = {
    '"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r",
}


def _require_text(value: object, target: str) -> str:
    """Return the value if it is a string UTF-8 can encode, else raise."""
    if not isinstance(value, str):
        raise TypeError(f"{target} quoting expects a string, found {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{target} value {value!r} is not valid Unicode text") from err
    return value


def shell_quote(value: str) -> str:
    """Quote a value as one word of a POSIX sh command.

    Grammar: POSIX shell single quotes (XCU 2.2.2), where every character stands for itself
    and a single quote is written as `'"'"'`. shlex.quote implements exactly that. A shell
    variable cannot hold NUL, so NUL raises ValueError.
    """
    text = _require_text(value, "shell")
    if "\0" in text:
        raise ValueError(f"shell value {text!r} contains NUL, which no shell word can carry")
    return shlex.quote(text)


def systemd_quote(value: str) -> str:
    """Quote a value as one argument word of a unit file's Exec*= command line.

    Grammar: systemd.syntax and systemd.service "Command lines" (systemd 252). The unit loader
    splits words, honouring double quotes and C escapes, so `\\`, `"` and control characters
    are escaped and any word that is not plainly safe is double-quoted (a bare `;` would end
    the command). It expands `%` specifiers in the words, so `%` is doubled. At exec time
    systemd expands `$NAME` and `${NAME}`, so `$` is written `$$`. NUL cannot be escaped and
    raises ValueError.

    NOTE: Only arguments are `$`-expanded. In the program path (the first word) and in
    Environment= a `$$` would stay doubled, so those take plain values. No kubecc unit sets
    Environment=, and binDir admits no `$`.
    """
    text = _require_text(value, "systemd")
    if "\0" in text:
        raise ValueError(f"systemd value {text!r} contains NUL, which a unit file cannot carry")

    text = text.replace("%", "%%").replace("$", "$$")
    if _SYSTEMD_BARE.fullmatch(text):
        return text
    return '"' + "".join(_systemd_escape_char(char) for char in text) + '"'


def _systemd_escape_char(char: str) -> str:
    if char in _SYSTEMD_ESCAPES:
        return _SYSTEMD_ESCAPES[char]
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\x{ord(char):02x}"
    return char


def toml_string(value: str) -> str:
    """Quote a value as a TOML basic string.

    Grammar: TOML 1.0 "String": a basic string is enclosed in `"`, and the quotation mark,
    the backslash and the control characters U+0000 to U+001F and U+007F must be escaped.
    """
    text = _require_text(value, "TOML")
    return '"' + "".join(_toml_escape_char(char) for char in text) + '"'


def _toml_escape_char(char: str) -> str:
    if char in _TOML_ESCAPES:
        return _TOML_ESCAPES[char]
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\u{ord(char):04X}"
    return char


def toml_value(value: str | bool | int) -> str:
    """Write a TOML value: a boolean, a decimal integer or a basic string (see toml_string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return toml_string(value)


def yaml_scalar(value: str) -> str:
    """Quote a value as a YAML double-quoted flow scalar on one line.

    Grammar: YAML 1.1 double-quoted style as PyYAML emits it, with every non-printable and
    non-ASCII character escaped, so the result never starts a tag, an anchor or a comment.
    """
    text = _require_text(value, "YAML")
    dumped = yaml.dump(
        text, Dumper=yaml.SafeDumper, default_style='"', width=float("inf"),
        allow_unicode=False, explicit_end=False,
    )
    scalar = dumped.removesuffix("\n")
    if "\n" in scalar:
        raise ValueError(f"YAML value {text!r} did not fit on one line")
    return scalar


def haproxy_word(value: str) -> str:
    """Check a value as one bare word of an HAProxy configuration line.

    In an HAProxy configuration line whitespace separates words, "#" starts a comment, and
    quotes, backslashes and "$" (environment expansion) change a word's meaning. kubecc writes
    only names, addresses, ports and paths, so a value with any other character raises
    ValueError instead of being quoted.
    """
    text = _require_text(value, "HAProxy")
    if not _HAPROXY_BARE.fullmatch(text):
        raise ValueError(f"HAProxy value {text!r} is not a bare word of [A-Za-z0-9_@:./-]")
    return text
