#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a circle (ARCHITECTURE.md,
"Invariants").

A module is one source file (`src/a.rs` or `src/a/mod.rs` is `a`, `src/a/b.rs` is `a::b`).
File A imports file B when A's non-test code names a path into B: `crate::…`, `$crate::…`,
`super::…` or `self::…`, resolved to the longest module prefix that is a file (a name the
crate root re-exports with `pub use` resolves to the module it comes from). `mod x;` is a
declaration, not an import; nor is a module's use of a module it is part of (its parent's
`super::*`, the crate root's items): a child belongs to the parent that declares it, so
only imports across the tree can close a circle. `#[cfg(test)]` modules are left out
(tests may reach anywhere). The crate root imports what it re-exports, like any other file.

Usage: check_module_cycles.py ROOT. Prints each circle with the names that tie it, and
exits 1 if there is one.
"""

import pathlib
import re
import sys

PATH = re.compile(r"(\$crate|crate|super|self)((?:::(?:\{|\*|\w+))+)")
REEXPORT = re.compile(r"pub\s+use\s+([\w:]+)::(\{[^}]*\}|\w+)\s*;", re.S)


def strip(text: str) -> str:
    """The code without comments, string literals or `#[cfg(test)]` items."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    out, i = [], 0
    for match in re.finditer(r"#\[cfg\(test\)\]", text):
        if match.start() < i:
            continue
        out.append(text[i : match.start()])
        j = match.end()
        # The item ends at its block's closing brace, or at `;` before any brace.
        semi, brace = text.find(";", j), text.find("{", j)
        if brace == -1 or (semi != -1 and semi < brace):
            i = semi + 1
            continue
        depth, k = 0, brace
        while k < len(text):
            depth += {"{": 1, "}": -1}.get(text[k], 0)
            if depth == 0:
                break
            k += 1
        i = k + 1
    out.append(text[i:])
    return "".join(out)


def modules(src: pathlib.Path) -> dict:
    """Module path (a tuple) -> file, for one crate's src directory."""
    found = {}
    for path in src.rglob("*.rs"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "mod" or (len(parts) == 1 and parts[0] in ("lib", "main")):
            parts = parts[:-1]
        found.setdefault(tuple(parts), path)
    return found


def resolve(mods: dict, reexports: dict, path: tuple):
    """The file module a path leads into: its longest prefix that is a module."""
    for end in range(len(path), -1, -1):
        if path[:end] in mods:
            prefix = path[:end]
            if prefix == () and len(path) > 0 and path[0] in reexports:
                return reexports[path[0]]
            return prefix
    return None


def crate_graph(src: pathlib.Path):
    mods = modules(src)
    root = mods.get(())
    reexports = {}
    if root is not None:
        for source, names in REEXPORT.findall(strip(root.read_text())):
            if source.split("::")[0] not in ("crate", "self") and (
                (source.split("::")[0],) not in mods
            ):
                continue
            target = tuple(p for p in source.split("::") if p not in ("crate", "self"))
            for name in re.findall(r"\w+", names):
                module = resolve(mods, {}, target + (name,))
                if module is not None and module != ():
                    reexports[name] = module
    edges = {}

    def link(module: tuple, target: tuple, name: str) -> None:
        """`module` imports what `target` (a path) leads into, unless that is itself or a
        module it is part of (`super::*`, the crate root's items): a child belongs to its
        parent, which declares it. A module naming its own submodule's items is an import."""
        found = resolve(mods, reexports, target)
        if found is not None and found != module[: len(found)]:
            edges.setdefault(module, {}).setdefault(found, set()).add(name)

    for module, path in mods.items():
        code = strip(path.read_text())
        # A child module declared here (`mod x;`) is named by a bare `x::` path too.
        for child in re.findall(r"\bmod\s+(\w+)\s*;", code):
            for rest in re.findall(r"(?<![\w:])" + child + r"((?:::(?:\{|\*|\w+))+)", code):
                names = [p for p in rest.split("::") if p and p not in ("{", "*")]
                link(module, module + (child,) + tuple(names), "::".join([child] + names))
        for head, rest in PATH.findall(code):
            names = [p for p in rest.split("::") if p and p not in ("{", "*")]
            if head in ("crate", "$crate"):
                target = tuple(names)
            elif head == "self":
                target = module + tuple(names)
            else:
                # `super` is the parent; each further leading `::super` climbs one more.
                supers = 1 + len(re.match(r"(::super)*", rest).group(0)) // len("::super")
                names = names[supers - 1 :]
                target = module[: max(len(module) - supers, 0)] + tuple(names)
            link(module, target, "::".join(names) or head)
    return mods, edges


def circles(edges: dict):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on.add(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(component)

    for node in list(edges):
        if node not in index:
            visit(node)
    return out


def main() -> int:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    sys.setrecursionlimit(10000)
    bad = 0
    for manifest in sorted(root.glob("*/Cargo.toml")):
        src = manifest.parent / "src"
        if not src.is_dir():
            continue
        mods, edges = crate_graph(src)
        for component in circles(edges):
            bad += 1
            members = set(component)
            print(f"{manifest.parent.name}: modules import each other in a circle:", file=sys.stderr)
            for module in sorted(component):
                for target, names in sorted(edges.get(module, {}).items()):
                    if target in members:
                        print(
                            f"  {mods[module].relative_to(root)} -> {mods[target].relative_to(root)}: "
                            + ", ".join(sorted(names)[:6]),
                            file=sys.stderr,
                        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
