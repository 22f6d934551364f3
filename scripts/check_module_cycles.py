#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a circle (ARCHITECTURE.md,
"Invariants").

A module is one source file (`src/a.rs` or `src/a/mod.rs` is `a`, `src/a/b.rs` is `a::b`);
an inline `mod x { … }` is part of its file. Each crate root (`src/lib.rs`, `src/main.rs`,
`src/bin/*.rs`) is its own tree, walked from the root through its `mod x;` declarations.
The files are read as tokens (scripts/rust_source.py), so comments and strings are no code,
and `#[cfg(test)]` items, test modules' files among them, are left out (tests may reach
anywhere).

File A imports file B when A's code names something that B defines, or passes through B:

- every path of a `use` tree, expanded: groups and nested groups (`use crate::{a::{x, y},
  b}`), `self`, `super`, `crate`, `$crate`, renames (`as`), whatever the visibility
  (`pub use`, `pub(crate) use`), and `use`s inside functions;
- every path in the code that starts with `crate`, `$crate`, `super`, `self` or a name in
  scope (a declared child module, an imported name, a name a glob brings in);
- every name a glob import (`use super::*`, `use crate::a::*`) brings in that A's code
  mentions and does not define or import itself.

A path is resolved name by name as rustc would: through child modules, and through each
`use` binding (private or `pub`) and glob import it meets, to the module that defines the
name. A imports every module on that way: the one it names and, along a chain of `use`s and
re-exports, each module the name passes through and the one that defines it. A name that
cannot be followed (a macro's, a generated module's) stops at the module it was looked up
in.

`mod x;` is a declaration, not an import; nor is a module's use of a module it is part of
(its parent, the crate root): a child belongs to the parent that declares it, so only
imports across the tree can close a circle. That exemption holds for the parent only: a
name a child reaches through its parent (`super::Name`, `use super::*`, `crate::Name`)
but that the parent imports from a sibling is an import of that sibling. A parent's use of
its own child's names is an import, like any other.

Usage: check_module_cycles.py ROOT. Prints each circle with the names that tie it, and
exits 1 if there is one.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import rust_source  # noqa: E402 (the helper beside this script)

# The keywords that define a name in a module's namespace.
ITEMS = {"fn", "struct", "enum", "union", "trait", "type", "const", "static"}
# Tokens a `use` declaration can follow.
BEFORE_USE = {None, ";", "{", "}", "]", ")", "pub"}
EXTERN = None  # what a path into another crate (or an unknown name) normalizes to


class Scope:
    """One module: a file, or an inline `mod x { … }` inside one."""

    def __init__(self, path: tuple, file: pathlib.Path, node: tuple):
        self.path = path  # the module path, from the crate root
        self.file = file
        self.node = node  # the module path of its file: the graph's node
        self.children = {}  # name -> public
        self.items = {}  # name -> public
        self.imports = {}  # name -> [(use path, public)], module level
        self.globs = []  # [(use path, public)], module level
        self.local = {}  # name -> [use path]: `use`s inside functions
        self.uses = []  # (use path, bound name or "*", line): every `use` entry, in order
        self.paths = []  # (path, line): paths in the code outside `use`s
        self.mentions = {}  # a bare identifier of the code -> its first line
        self.shadows = set()  # names the code binds itself (items, `let`s, parameters)


class Crate:
    """The module tree of one crate root, and what each module imports."""

    def __init__(self, root_file: pathlib.Path):
        self.scopes = {}
        self.files = set()
        self._globs = {}
        self.read_file((), root_file, root_file.parent)

    # Reading ---------------------------------------------------------------------------

    def read_file(self, path: tuple, file: pathlib.Path, directory: pathlib.Path) -> None:
        """Reads one file module; `directory` holds its children's files."""
        self.files.add(file.resolve())
        toks = rust_source.without_tests(rust_source.tokens(file.read_text(encoding="utf-8")))
        scope = Scope(path, file, path)
        self.scopes[path] = scope
        self.read_body(scope, toks, 0, len(toks), directory)

    def read_body(self, scope: Scope, toks: list, start: int, end: int, directory) -> None:
        """Reads the items, `use`s, paths and names of a module's tokens `start..end`."""
        depth, i, path_attribute = 0, start, None
        # Whether each open brace is an `impl` or `trait` body, whose items are methods
        # (named after the type) rather than names of the module's code.
        in_impl, header_is_impl = [False], False
        while i < end:
            t = toks[i]
            previous = toks[i - 1].text if i > start else None
            following = toks[i + 1] if i + 1 < end else None
            if t.kind == "p":
                if t.text == "#" and (close := rust_source.attribute_end(toks, i)) != -1:
                    inside = toks[i + 2 : close]
                    if depth == 0 and len(inside) == 3 and inside[0].text == "path" and inside[1].text == "=":
                        path_attribute = inside[2].text.strip('"')
                    i = close + 1
                    continue
                if t.text == "{":
                    depth += 1
                    in_impl.append(header_is_impl)
                elif t.text == "}" and depth > 0:
                    depth -= 1
                    in_impl.pop()
                if t.text in "{};":
                    header_is_impl = False
                i += 1
                continue
            if t.kind != "id":
                i += 1
                continue
            if t.text == "use" and previous in BEFORE_USE and following is not None and following.text != "<":
                i = self.read_use(scope, toks, i, depth == 0)
                continue
            # `mod x;` inside braces is a macro's (`cfg_if! { mod x; }`): blocks cannot have one.
            declares = i + 2 < end and toks[i + 2].text == ";"
            if t.text == "mod" and (depth == 0 or declares) and following is not None and following.kind == "id":
                i = self.read_mod(scope, toks, i, end, directory, path_attribute)
                path_attribute = None
                continue
            if t.text in ("impl", "trait") and (previous in BEFORE_USE or previous in ("unsafe", "auto")):
                header_is_impl = True  # an item's `impl`, not `-> impl Trait`
            if t.text in ITEMS and following is not None and following.kind == "id":
                if not in_impl[-1]:
                    scope.shadows.add(following.text)
                if depth == 0:
                    scope.items[following.text] = public(toks, i)
            if t.text == "macro_rules" and following is not None and following.text == "!" and i + 2 < end:
                scope.shadows.add(toks[i + 2].text)
            if t.text == "let":
                # `let x`, `let mut x`, `let ref x` (a pattern is left alone: its names are
                # its variables' and its types', and a type is no binding).
                j = i + 1
                while j < end and toks[j].text in ("mut", "ref"):
                    j += 1
                if j + 1 < end and toks[j].kind == "id" and toks[j + 1].text in ("=", ":", ";"):
                    scope.shadows.add(toks[j].text)
            if following is not None and following.text == ":" and previous != "::":
                scope.shadows.add(t.text)  # a parameter, a field, a typed `let`
            if following is not None and following.text == "::" and previous not in (".", "::"):
                if previous != "$" or t.text == "crate":  # `$crate::…`, not a macro's `$name::…`
                    i = self.read_path(scope, toks, i, end)
                    continue
            if previous not in (".", "::", "$") and following is not None:
                # A type, constant or trait (capitalised), or a call or macro: a lowercase
                # name alone is most often a variable of the same name.
                if t.text[0].isupper() or following.text in ("(", "!"):
                    scope.mentions.setdefault(t.text, t.line)
            i += 1

    def read_path(self, scope: Scope, toks: list, i: int, end: int) -> int:
        """A path in the code (`a::b::c`), from its first segment at `i`."""
        segments, line = [toks[i].text], toks[i].line
        visibility = i >= 2 and toks[i - 1].text == "in" and toks[i - 2].text == "("
        i += 1
        while i + 1 < end and toks[i].text == "::" and toks[i + 1].kind == "id":
            segments.append(toks[i + 1].text)
            i += 2
        if not visibility:
            scope.paths.append((tuple(segments), line))
        return i

    def read_use(self, scope: Scope, toks: list, i: int, module_level: bool) -> int:
        """A `use` declaration at `i`: records each entry of its tree; returns the index
        after its `;`."""
        line, is_public = toks[i].line, public(toks, i)
        entries, j = use_tree(toks, i + 1, ())
        for segments, name in entries:
            scope.uses.append((segments, name, line))
            if name == "*":
                if module_level:
                    scope.globs.append((segments, is_public))
                else:
                    scope.local.setdefault("*", []).append(segments)
            elif module_level:
                scope.imports.setdefault(name, []).append((segments, is_public))
            else:
                scope.local.setdefault(name, []).append(segments)
        while j < len(toks) and toks[j].text != ";":
            j += 1
        return j + 1

    def read_mod(self, scope: Scope, toks: list, i: int, end: int, directory, path_attribute) -> int:
        """`mod name;` (a file, read now) or `mod name { … }` (an inline module)."""
        name = toks[i + 1].text
        scope.children[name] = public(toks, i)
        scope.shadows.add(name)
        path = scope.path + (name,)
        j = i + 2
        if j < end and toks[j].text == "{":
            close = rust_source.matching(toks, j)
            inline = Scope(path, scope.file, scope.node)
            self.scopes[path] = inline
            inner = directory / (path_attribute or name)
            self.read_body(inline, toks, j + 1, close, inner)
            return close + 1
        if path_attribute is not None:
            file = scope.file.parent / path_attribute
            candidates = [file]
        else:
            candidates = [directory / f"{name}.rs", directory / name / "mod.rs"]
        for file in candidates:
            if file.is_file() and path not in self.scopes:
                child_directory = file.parent if file.name == "mod.rs" else file.parent / file.stem
                self.read_file(path, file, child_directory)
                break
        return j + 1

    # Resolving -------------------------------------------------------------------------

    def normalize(self, segments: tuple, scope: Scope, code: bool = False):
        """A path as written in `scope` to a path from the crate root (EXTERN when it leads
        out of the crate). In code, a name a function's own `use` bound comes first."""
        if not segments or segments[0] == "::":
            return EXTERN
        first, rest = segments[0], segments[1:]
        if first == "crate":
            return rest
        if first == "self":
            return scope.path + rest
        if first == "super":
            base = scope.path[:-1]
            while rest and rest[0] == "super":
                base, rest = base[:-1], rest[1:]
            return base + rest
        if code and first in scope.local and first not in scope.items and first not in scope.children:
            target = self.normalize(scope.local[first][0], scope)
            return EXTERN if target is EXTERN else target + rest
        if self.knows(scope.path, first, set()):
            return scope.path + segments
        return EXTERN

    def knows(self, module: tuple, name: str, seen: set) -> bool:
        """Whether `name` is bound in `module`: defined, declared, imported or globbed."""
        scope = self.scopes.get(module)
        if scope is None or module in seen:
            return False
        seen.add(module)
        if name in scope.children or name in scope.items or name in scope.imports:
            return True
        return any(self.knows(glob, name, seen) for glob, _ in self.glob_modules(module))

    def glob_modules(self, module: tuple) -> list:
        """The modules `module`'s glob imports read, with whether each glob is public."""
        if module not in self._globs:
            self._globs[module] = []  # a glob circle ends here
            scope = self.scopes[module]
            found = []
            for segments, is_public in scope.globs:
                target = self.normalize(segments, scope)
                if target is not EXTERN:
                    _, end = self.walk(target, 0)
                    if end is not None:
                        found.append((end, is_public))
            self._globs[module] = found
        return self._globs[module]

    def walk(self, segments: tuple, depth: int):
        """Follows a path from the crate root: (the modules it passes through or ends in,
        the module it names or None when it names an item)."""
        hops, module = [], ()
        if depth > 40:
            return hops, None
        for index, name in enumerate(segments):
            scope = self.scopes[module]
            rest = segments[index + 1 :]
            if module + (name,) in self.scopes:  # a child module (whose file was found)
                module = module + (name,)
                continue
            hops.append(module)
            if name in scope.items:
                return hops, None
            if name in scope.imports:
                end = None
                for target, _ in scope.imports[name]:
                    target = self.normalize(target, scope)
                    if target is not EXTERN:
                        more, end = self.walk(target + rest, depth + 1)
                        hops += more
                return hops, end
            for glob, _ in self.glob_modules(module):
                if self.knows(glob, name, set()):
                    more, end = self.walk(glob + (name,) + rest, depth + 1)
                    return hops + more, end
            return hops, None
        hops.append(module)
        return hops, module

    def visible(self, module: tuple, viewer: tuple, seen: set) -> set:
        """The names of `module` a glob import in `viewer` brings in: all of them for a
        module `viewer` is part of, the public ones otherwise."""
        scope = self.scopes.get(module)
        if scope is None or module in seen:
            return set()
        seen.add(module)
        inside = viewer[: len(module)] == module
        names = set()
        for table in (scope.children, scope.items):
            names.update(n for n, is_public in table.items() if is_public or inside)
        for name, bindings in scope.imports.items():
            if name != "_" and (inside or any(is_public for _, is_public in bindings)):
                names.add(name)
        for glob, is_public in self.glob_modules(module):
            if is_public or inside:
                names |= self.visible(glob, viewer, seen)
        return names

    # Edges -----------------------------------------------------------------------------

    def edges(self) -> dict:
        """File node -> file node -> the names that tie them."""
        out = {}

        def link(scope: Scope, target, label: str) -> None:
            if target is EXTERN:
                return
            for hop in self.walk(target, 0)[0]:
                node = self.scopes[hop].node
                if node != scope.node[: len(node)]:
                    out.setdefault(scope.node, {}).setdefault(node, set()).add(label)

        for scope in self.scopes.values():
            own = set(scope.children) | set(scope.items) | set(scope.imports) | set(scope.local)
            own |= scope.shadows
            globs = []
            for segments, name, _ in scope.uses:
                target = self.normalize(segments, scope)
                link(scope, target, "::".join(segments) or "*")
                if name == "*" and target is not EXTERN:
                    end = self.walk(target, 0)[1]
                    if end is not None:
                        globs.append(end)
            for segments, _ in scope.paths:
                first = segments[0]
                named = first in ("crate", "self", "super") or first in scope.children
                named = named or first in scope.imports or first in scope.local
                if not named and first in own:
                    continue  # its own item (`Type::new`), a type parameter, a variable
                link(scope, self.normalize(segments, scope, code=True), "::".join(segments))
            for glob in globs:
                for name in self.visible(glob, scope.path, set()) & set(scope.mentions):
                    if name not in own:
                        link(scope, glob + (name,), name)
        return out


def public(toks: list, i: int) -> bool:
    """Whether the item whose keyword is at `i` has a `pub` visibility (`pub(self)` aside)."""
    j = i - 1
    while j >= 0 and (toks[j].text in ("const", "async", "unsafe", "extern", "safe") or toks[j].kind == "lit"):
        j -= 1
    if j >= 0 and toks[j].text == ")":
        opening = j
        while opening >= 0 and toks[opening].text != "(":
            opening -= 1
        inside = [t.text for t in toks[opening + 1 : j]]
        if inside == ["self"]:
            return False
        j = opening - 1
    return j >= 0 and toks[j].text == "pub"


def use_tree(toks: list, i: int, prefix: tuple):
    """Expands the `use` tree at `i` under `prefix`: ([(path, bound name or "*")], index
    after the tree)."""
    segments = list(prefix)
    if i < len(toks) and toks[i].text == "::":
        segments.append("::")  # `use ::name` is another crate
        i += 1
    while i < len(toks):
        t = toks[i]
        if t.text == "{":
            entries, i = [], i + 1
            while i < len(toks) and toks[i].text != "}":
                more, i = use_tree(toks, i, tuple(segments))
                entries += more
                if i < len(toks) and toks[i].text == ",":
                    i += 1
            return entries, i + 1
        if t.text == "*":
            return [(tuple(segments), "*")], i + 1
        if t.kind != "id":
            return [], i
        segments.append(t.text)
        i += 1
        if i < len(toks) and toks[i].text == "::":
            i += 1
            continue
        name = segments[-1]
        if name == "self":  # `a::{self}` is `a`
            segments.pop()
            name = segments[-1] if segments else "self"
        if i + 1 < len(toks) and toks[i].text == "as":
            name = toks[i + 1].text
            i += 2
        return [(tuple(segments), name)], i
    return [], i


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


def crate_roots(src: pathlib.Path) -> list:
    roots = [src / "lib.rs", src / "main.rs"]
    roots += sorted((src / "bin").glob("*.rs")) + sorted((src / "bin").glob("*/main.rs"))
    return [root for root in roots if root.is_file()]


def main() -> int:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    sys.setrecursionlimit(10000)
    bad = 0
    for manifest in sorted(root.glob("*/Cargo.toml")):
        src = manifest.parent / "src"
        if not src.is_dir():
            continue
        for crate_root in crate_roots(src):
            crate = Crate(crate_root)
            edges = crate.edges()
            for component in circles(edges):
                bad += 1
                members = set(component)
                where = crate_root.relative_to(root)
                print(f"{manifest.parent.name} ({where}): modules import each other in a circle:", file=sys.stderr)
                for module in sorted(component):
                    for target, names in sorted(edges.get(module, {}).items()):
                        if target in members:
                            print(
                                f"  {crate.scopes[module].file.relative_to(root)} -> "
                                f"{crate.scopes[target].file.relative_to(root)}: " + ", ".join(sorted(names)[:6]),
                                file=sys.stderr,
                            )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
