"""Rust source as tokens, for the checks of `scripts/` (check_function_length.py,
check_module_cycles.py): Python 3.11 standard library only, no Rust parser.

`tokens(text)` reads a file into identifiers, literals, lifetimes and punctuation, each with
its line, and drops comments: a brace or a `fn` inside a string, a char literal or a comment
is never code. `test_spans(toks)` finds the items under `#[cfg(test)]` (or
`#[cfg(all(test, …))]`), so that both checks can tell test code from the rest, and
`matching(toks, i)` finds the bracket that closes the one at `i`.
"""

import re
from typing import NamedTuple


class Token(NamedTuple):
    kind: str  # "id" (identifier or keyword), "lit" (literal), "life" (lifetime), "p" (punctuation)
    text: str  # as written (a literal's text is never read as code)
    line: int


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[0-9][0-9A-Za-z_]*(?:\.[0-9][0-9A-Za-z_]*)?")
_RAW_STRING = re.compile(r'(?:b|c)?r(#*)"')
_CHAR = re.compile(r"b?'(?:\\(?:u\{[0-9A-Fa-f_]*\}|x[0-9A-Fa-f]{2}|.)|[^'\\\n])'", re.S)
OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {")", "]", "}"}


def tokens(text: str) -> list:
    """The tokens of a Rust source file, comments left out."""
    out, i, line, n = [], 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end == -1 else end
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    line += text[i] == "\n"
                    i += 1
        elif (raw := _RAW_STRING.match(text, i)) and (i == 0 or not _is_ident_char(text[i - 1])):
            close = '"' + raw.group(1)
            end = text.find(close, raw.end())
            end = n if end == -1 else end + len(close)
            out.append(Token("lit", text[i:end], line))
            line += text.count("\n", i, end)
            i = end
        elif c == '"' or (c in "bc" and text.startswith('"', i + 1) and not _ident_before(text, i)):
            j = text.index('"', i) + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(Token("lit", text[i : j + 1], line))
            line += text.count("\n", i, j + 1)
            i = j + 1
        elif (c == "'" or (c == "b" and text.startswith("'", i + 1) and not _ident_before(text, i))) and (
            char := _CHAR.match(text, i)
        ):
            out.append(Token("lit", char.group(0), line))
            i = char.end()
        elif c == "'":
            ident = _IDENT.match(text, i + 1)
            end = ident.end() if ident else i + 1
            out.append(Token("life", text[i:end], line))
            i = end
        elif text.startswith("r#", i) and (ident := _IDENT.match(text, i + 2)):
            out.append(Token("id", ident.group(0), line))
            i = ident.end()
        elif ident := _IDENT.match(text, i):
            out.append(Token("id", ident.group(0), line))
            i = ident.end()
        elif number := _NUMBER.match(text, i):
            out.append(Token("lit", number.group(0), line))
            i = number.end()
        elif text.startswith("::", i):
            out.append(Token("p", "::", line))
            i += 2
        else:
            out.append(Token("p", c, line))
            i += 1
    return out


def _is_ident_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _ident_before(text: str, i: int) -> bool:
    """Whether the letter at `i` continues an identifier (`ab"…"` is no byte string)."""
    return i > 0 and _is_ident_char(text[i - 1])


def matching(toks: list, i: int) -> int:
    """The index of the bracket closing the one at `i` (or the last token if none does)."""
    depth = 0
    for j in range(i, len(toks)):
        t = toks[j]
        if t.kind == "p" and t.text in OPENERS:
            depth += 1
        elif t.kind == "p" and t.text in CLOSERS:
            depth -= 1
            if depth == 0:
                return j
    return len(toks) - 1


def attribute_end(toks: list, i: int) -> int:
    """For `#` at `i` opening an attribute (`#[…]` or `#![…]`), the index of its `]`; else -1."""
    j = i + 1
    if j < len(toks) and toks[j].text == "!":
        j += 1
    if toks[i].text != "#" or j >= len(toks) or toks[j].text != "[":
        return -1
    return matching(toks, j)


def is_test_cfg(attribute: list) -> bool:
    """Whether the tokens inside `#[…]` are `cfg(test)` or `cfg(all(…, test, …))`: the item
    exists in test builds only."""
    text = "".join(t.text for t in attribute)
    if text == "cfg(test)":
        return True
    found = re.fullmatch(r"cfg\(all\((.*)\)\)", text)
    if not found:
        return False
    depth, part, parts = 0, "", []
    for c in found.group(1):
        depth += (c == "(") - (c == ")")
        if c == "," and depth == 0:
            parts.append(part)
            part = ""
        else:
            part += c
    return "test" in parts + [part]


def item_end(toks: list, i: int) -> int:
    """The index of the last token of the item (or field, statement, match arm) starting at
    `i`: its `;` or `,`, or the `}` of its block."""
    depth = 0
    j = i
    while j < len(toks):
        t = toks[j]
        if t.kind == "p":
            if t.text == "{" and depth == 0:
                return matching(toks, j)
            if t.text in OPENERS:
                depth += 1
            elif t.text in CLOSERS:
                if depth == 0:
                    return j - 1
                depth -= 1
            elif t.text in ";," and depth == 0:
                return j
        j += 1
    return len(toks) - 1


def test_spans(toks: list) -> list:
    """The (first, last) token indexes of each item under a test-only cfg, its attributes
    included. An inner `#![cfg(test)]` makes the whole file one such span."""
    spans, i = [], 0
    while i < len(toks):
        end = attribute_end(toks, i) if toks[i].text == "#" else -1
        if end == -1:
            i += 1
            continue
        inner = toks[i + 1].text == "!"
        body = toks[i + (3 if inner else 2) : end]
        if not is_test_cfg(body):
            i = end + 1
            continue
        if inner:
            return [(0, len(toks) - 1)]
        j = end + 1
        while j < len(toks) and (next_end := attribute_end(toks, j)) != -1:
            j = next_end + 1
        last = item_end(toks, j)
        spans.append((i, last))
        i = last + 1
    return spans


def without_tests(toks: list) -> list:
    """The tokens outside test-only items."""
    out, i = [], 0
    for first, last in test_spans(toks):
        out.extend(toks[i:first])
        i = last + 1
    out.extend(toks[i:])
    return out
