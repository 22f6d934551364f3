#!/usr/bin/env python3
"""The public surface of the API crate (`code-mode-protocol`), as a committed list, so that a
change to the API is a visible diff (issue 87: the API crate is only the API).

Every `pub` item outside test code, one line each, in file order, its module first:
functions and methods with their signatures (inherent methods under their `impl`'s
header), structs, enums with each variant, traits with each method, fields, constants,
statics, type aliases, modules and re-exports; and the header of every trait `impl` of the
crate's types (`impl Display for CellId`). Bodies, doc comments and attributes are left
out. `pub(crate)` and narrower items are not the API and are not listed.

    scripts/api_surface.py            # prints the surface
    scripts/api_surface.py --write    # writes code-mode-protocol/API.txt
    scripts/api_surface.py --check    # fails, with the diff, when the file is not the surface
    scripts/api_surface.py --crate DIR ...  # another crate (its API.txt), for the tests

Python 3.11 standard library only; the tokens come from scripts/rust_source.py.
"""

import difflib
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from rust_source import OPENERS, attribute_end, matching, tokens, without_tests  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATE = ROOT / "code-mode-protocol"
LISTED = CRATE / "API.txt"
HEADER = (
    "# The public surface of code-mode-protocol (scripts/api_surface.py --write writes it;\n"
    "# .ci/run checks it): a change here is a change to the API.\n"
)


def module_of(path: pathlib.Path, crate: pathlib.Path) -> str:
    """`src/a/b.rs` -> `a::b`; `src/lib.rs` -> `crate`; `src/a/mod.rs` -> `a`."""
    parts = list(path.relative_to(crate / "src").with_suffix("").parts)
    if parts[-1] in ("lib", "mod"):
        parts.pop()
    return "::".join(parts) or "crate"


def text_of(toks: list) -> str:
    """Tokens as one line: spaces only where two words would run together."""
    out = ""
    for tok in toks:
        word = tok.kind in ("id", "lit", "life")
        if out and word and (out[-1].isalnum() or out[-1] in "_'\"") :
            out += " "
        elif out and tok.text in ("->", "=", "+", "where") or out.endswith((",", "->", "=", "+")):
            out += " "
        out += tok.text
    return out


def skip_attributes(toks: list, i: int) -> int:
    while i < len(toks) and toks[i].text == "#" and attribute_end(toks, i) != -1:
        i = attribute_end(toks, i) + 1
    return i


def signature_end(toks: list, i: int, stops: tuple) -> int:
    """The index of the first token in `stops` at bracket depth 0 from `i` (angle brackets
    are not counted: a `{` or `;` never appears inside them)."""
    while i < len(toks):
        if toks[i].text in stops:
            return i
        if toks[i].text in OPENERS:
            i = matching(toks, i) + 1
            continue
        i += 1
    return i


def variants(toks: list, start: int, end: int) -> list:
    """The variants of an enum whose body is `toks[start..end]` (between its braces)."""
    found, i = [], start
    while i < end:
        i = skip_attributes(toks, i)
        if i >= end:
            break
        stop = signature_end(toks, i, (",", "}"))
        stop = min(stop, end)
        found.append(text_of(toks[i:stop]))
        i = stop + 1
    return found


def surface(toks: list, start: int, end: int, context: str, out: list) -> None:
    """Appends the public items of `toks[start..end]` to `out`, each under `context`."""
    i = start
    while i < end:
        tok = toks[i]
        if tok.text == "impl" and tok.kind == "id":
            brace = signature_end(toks, i, ("{", ";"))
            if brace >= end or toks[brace].text != "{":
                i = brace + 1
                continue
            header = text_of(toks[i:brace])
            close = matching(toks, brace)
            if any(t.text == "for" for t in toks[i:brace]):
                out.append(f"{context} | {header}")
            surface(toks, brace + 1, close, f"{context} | {header}", out)
            i = close + 1
            continue
        is_pub = tok.text == "pub" and tok.kind == "id"
        if not is_pub or (i + 1 < end and toks[i + 1].text == "("):
            if tok.text in OPENERS:
                i = matching(toks, i) + 1
            else:
                i += 1
            continue
        kind = toks[i + 1].text if i + 1 < end else ""
        if kind in ("struct", "enum", "trait", "union", "mod"):
            brace = signature_end(toks, i, ("{", ";", "("))
            out.append(f"{context} | {text_of(toks[i:brace])}")
            if brace < end and toks[brace].text in ("{", "("):
                close = matching(toks, brace)
                if kind == "enum":
                    for variant in variants(toks, brace + 1, close):
                        out.append(f"{context} | {text_of(toks[i:brace])} | {variant}")
                elif kind == "trait":
                    trait_items(toks, brace + 1, close, f"{context} | {text_of(toks[i:brace])}", out)
                elif kind == "struct" and toks[brace].text == "(":
                    out[-1] = f"{context} | {text_of(toks[i:close + 1])}"
                elif kind in ("struct", "union", "mod"):
                    surface(toks, brace + 1, close, f"{context} | {text_of(toks[i:brace])}", out)
                i = close + 1
            else:
                i = brace + 1
            continue
        words = [t.text for t in toks[i + 1 : min(i + 5, end)]]
        if "fn" in words[: words.index("fn") + 1 if "fn" in words else 0] and all(
            word in ("const", "async", "unsafe", "extern", "fn") or word.startswith('"')
            for word in words[: words.index("fn")]
        ):
            stops = ("{", ";")
        elif kind in ("const", "static"):
            stops = ("=", ";")
        elif kind in ("use", "type"):
            stops = (";",)
        else:
            # A field (`pub name: Type`), up to its comma.
            stops = (",", "}")
        stop = signature_end(toks, i, stops)
        stop = min(stop, end)
        out.append(f"{context} | {text_of(toks[i:stop])}")
        i = stop + 1 if stop < end and toks[stop].text != "{" else stop
        if i < end and toks[i].text == "{":
            i = matching(toks, i) + 1


def trait_items(toks: list, start: int, end: int, context: str, out: list) -> None:
    """A trait's methods, constants and types (all public with the trait)."""
    i = start
    while i < end:
        i = skip_attributes(toks, i)
        if i >= end:
            break
        stop = signature_end(toks, i, ("{", ";"))
        stop = min(stop, end)
        out.append(f"{context} | {text_of(toks[i:stop])}")
        i = matching(toks, stop) + 1 if stop < end and toks[stop].text == "{" else stop + 1


def current(crate: pathlib.Path) -> str:
    lines = []
    for path in sorted((crate / "src").rglob("*.rs")):
        toks = without_tests(tokens(path.read_text()))
        surface(toks, 0, len(toks), module_of(path, crate), lines)
    return HEADER + "".join(f"{line}\n" for line in lines)


def main() -> int:
    args = sys.argv[1:]
    crate = pathlib.Path(args[args.index("--crate") + 1]) if "--crate" in args else CRATE
    listed_path = crate / LISTED.name
    surface_text = current(crate)
    if "--write" in args:
        listed_path.write_text(surface_text)
        return 0
    if "--check" in args:
        listed = listed_path.read_text() if listed_path.exists() else ""
        if listed == surface_text:
            return 0
        diff = difflib.unified_diff(
            listed.splitlines(True), surface_text.splitlines(True), str(listed_path), "the code"
        )
        sys.stderr.write("".join(diff))
        sys.stderr.write(
            "the API crate's public surface changed; if that is meant, run "
            "scripts/api_surface.py --write and commit code-mode-protocol/API.txt\n"
        )
        return 1
    sys.stdout.write(surface_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
