"""Tests of check_module_cycles.py, check_function_length.py and api_surface.py: each builds small crates in
a temporary directory and runs the script on them as `.ci/run` does.

The first tests of each class are the ways the scripts were once fooled (a circle or a long
function they did not see); the others must pass. Run: `python3 scripts/test_checks.py`.
`CHECK_SCRIPTS=DIR` runs the scripts of DIR instead (an older copy, to see which tests it
fails).
"""

import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap
import unittest

SCRIPTS = pathlib.Path(os.environ.get("CHECK_SCRIPTS", pathlib.Path(__file__).resolve().parent))


def run(script: str, files: dict) -> subprocess.CompletedProcess:
    """Runs `script` on a workspace of one crate, `demo`, whose files are `files` (a path
    under `demo/` -> its text)."""
    with tempfile.TemporaryDirectory() as root:
        crate = pathlib.Path(root, "demo")
        (crate / "src").mkdir(parents=True)
        (crate / "Cargo.toml").write_text('[package]\nname = "demo"\n')
        for name, text in files.items():
            path = crate / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        return subprocess.run(
            [sys.executable, str(SCRIPTS / script), root], capture_output=True, text=True, check=False
        )


class ModuleCycles(unittest.TestCase):
    def assertCircle(self, files: dict, *between: str) -> None:
        result = run("check_module_cycles.py", files)
        self.assertEqual(result.returncode, 1, f"no circle found:\n{result.stderr}")
        for name in between:
            self.assertIn(name, result.stderr)

    def assertNoCircle(self, files: dict) -> None:
        result = run("check_module_cycles.py", files)
        self.assertEqual(result.returncode, 0, result.stderr)

    # The ways the old script was fooled: each a circle between `a` and `b` of which one
    # direction is written plainly (`use crate::a::A;`) and the other in the fooling form.

    def test_grouped_import(self):
        self.assertCircle(
            {
                "src/lib.rs": "mod a;\nmod b;\n",
                "src/a.rs": "use crate::{b::B};\npub struct A(pub B);\n",
                "src/b.rs": "use crate::a::A;\npub struct B;\npub fn f(_: A) {}\n",
            },
            "src/a.rs -> demo/src/b.rs",
        )

    def test_nested_use_tree(self):
        self.assertCircle(
            {
                "src/lib.rs": "mod a;\nmod b;\nmod c;\n",
                "src/a.rs": "use crate::{b::{B, g}, c::C};\npub struct A(pub B, pub C);\n",
                "src/b.rs": "use crate::a::A;\npub struct B;\npub fn g(_: A) {}\n",
                "src/c.rs": "pub struct C;\n",
            },
            "src/a.rs -> demo/src/b.rs",
        )

    def test_group_with_self_and_rename(self):
        self.assertCircle(
            {
                "src/lib.rs": "mod a;\nmod b;\n",
                "src/a.rs": "use crate::{b::{self as other}};\npub fn a() { other::b() }\n",
                "src/b.rs": "use crate::a::a;\npub fn b() { a() }\n",
            },
            "src/a.rs -> demo/src/b.rs",
        )

    def test_glob_of_the_parent(self):
        # `a` reaches `B` through its parent's glob: the parent imports it from `b`.
        self.assertCircle(
            {
                "src/lib.rs": "mod a;\nmod b;\nuse b::B;\n",
                "src/a.rs": "use super::*;\npub struct A(pub B);\n",
                "src/b.rs": "use crate::a::A;\npub struct B;\npub fn f(_: A) {}\n",
            },
            "src/a.rs -> demo/src/b.rs",
        )

    def test_glob_name_behind_mut_and_beside_a_method_of_its_name(self):
        self.assertCircle(
            {
                "src/lib.rs": "mod a;\nmod b;\nuse b::{B, make};\n",
                "src/a.rs": """\
                    use super::*;
                    pub struct A;
                    impl A {
                        pub fn make(&self) {}
                    }
                    pub fn f(b: &mut B) { make(A); let _ = b; }
                """,
                "src/b.rs": "use crate::a::A;\npub struct B;\npub fn make(_: A) {}\n",
            },
            "src/a.rs -> demo/src/b.rs: B, make",
        )

    def test_glob_of_the_parents_glob(self):
        self.assertCircle(
            {
                "src/lib.rs": "mod a;\nmod b;\nuse b::*;\n",
                "src/a.rs": "use super::*;\npub struct A(pub B);\n",
                "src/b.rs": "use crate::a::A;\npub struct B;\npub fn f(_: A) {}\n",
            },
            "src/a.rs -> demo/src/b.rs",
        )

    def test_name_through_the_parent(self):
        # `super::B`, where the parent (not the crate root) imports `B` from a sibling.
        self.assertCircle(
            {
                "src/lib.rs": "mod p;\n",
                "src/p/mod.rs": "mod a;\nmod b;\nuse b::B;\n",
                "src/p/a.rs": "pub struct A(pub super::B);\n",
                "src/p/b.rs": "use super::a::A;\npub struct B;\npub fn f(_: A) {}\n",
            },
            "src/p/a.rs -> demo/src/p/b.rs",
        )

    def test_sibling_module_through_the_parents_glob(self):
        self.assertCircle(
            {
                "src/lib.rs": "mod a;\nmod b;\n",
                "src/a.rs": "use super::*;\npub fn a() { b::b() }\n",
                "src/b.rs": "use crate::a::a;\npub fn b() { a() }\n",
            },
            "src/a.rs -> demo/src/b.rs",
        )

    def test_crate_visible_reexport(self):
        self.assertCircle(
            {
                "src/lib.rs": "mod a;\nmod b;\npub(crate) use b::B;\n",
                "src/a.rs": "use crate::B;\npub struct A(pub B);\n",
                "src/b.rs": "use crate::a::A;\npub struct B;\npub fn f(_: A) {}\n",
            },
            "src/a.rs -> demo/src/b.rs",
        )

    def test_renamed_reexport(self):
        self.assertCircle(
            {
                "src/lib.rs": "mod a;\nmod b;\npub use b::B as Bee;\n",
                "src/a.rs": "use crate::Bee;\npub struct A(pub Bee);\n",
                "src/b.rs": "use crate::a::A;\npub struct B;\npub fn f(_: A) {}\n",
            },
            "src/a.rs -> demo/src/b.rs",
        )

    def test_glob_reexport(self):
        # The crate root re-exports all of `b`; `a` names one of those names.
        self.assertCircle(
            {
                "src/lib.rs": "mod a;\nmod b;\npub use b::*;\n",
                "src/a.rs": "use crate::B;\npub struct A(pub B);\n",
                "src/b.rs": "use crate::a::A;\npub struct B;\npub fn f(_: A) {}\n",
            },
            "src/a.rs -> demo/src/b.rs",
        )

    def test_reexport_chain(self):
        # `a` names its parent's `B`, which the parent re-exports from `q`, which re-exports
        # it from `q::b`: `a` imports both.
        self.assertCircle(
            {
                "src/lib.rs": "mod p;\n",
                "src/p/mod.rs": "mod a;\nmod q;\npub use q::B;\n",
                "src/p/a.rs": "pub struct A(pub super::B);\n",
                "src/p/q/mod.rs": "mod b;\npub use self::b::B;\n",
                "src/p/q/b.rs": "use crate::p::a::A;\npub struct B;\npub fn f(_: A) {}\n",
            },
            "src/p/a.rs -> demo/src/p/q/b.rs",
            "src/p/a.rs -> demo/src/p/q/mod.rs",
        )

    def test_import_after_a_char_literal(self):
        # A `'"'` once opened a string that hid the code after it.
        self.assertCircle(
            {
                "src/lib.rs": "mod a;\nmod b;\n",
                "src/a.rs": """\
                    pub fn quote() -> char { '"' }
                    use crate::b::B;
                    pub struct A(pub B);
                    pub fn name() -> &'static str { "a" }
                """,
                "src/b.rs": "use crate::a::A;\npub struct B;\npub fn f(_: A) {}\n",
            },
            "src/a.rs -> demo/src/b.rs",
        )

    # What the old script found too.

    def test_binary_and_library_roots_are_apart(self):
        # A circle in the binary's own tree, beside a library with modules of the same names.
        self.assertCircle(
            {
                "src/lib.rs": "pub mod x;\n",
                "src/x.rs": "pub struct X;\n",
                "src/main.rs": "mod a;\nmod b;\nfn main() {}\n",
                "src/a.rs": "use crate::b::B;\npub struct A(pub B);\n",
                "src/b.rs": "use crate::a::A;\npub struct B;\npub fn f(_: A) {}\n",
            },
            "src/a.rs -> demo/src/b.rs",
        )

    def test_module_declared_in_a_macro(self):
        self.assertCircle(
            {
                "src/lib.rs": "mod a;\nsome_macro! {\n    mod b;\n}\n",
                "src/a.rs": "use crate::b::B;\npub struct A(pub B);\n",
                "src/b.rs": "use crate::a::A;\npub struct B;\npub fn f(_: A) {}\n",
            },
            "src/a.rs -> demo/src/b.rs",
        )

    # What must pass.

    def test_child_using_its_parent(self):
        self.assertNoCircle(
            {
                "src/lib.rs": "mod a;\npub struct Root;\npub fn f() -> a::A { a::A }\n",
                "src/a.rs": "use super::*;\nuse crate::Root;\npub struct A;\npub fn g(_: Root) {}\n",
            }
        )

    def test_parents_glob_name_not_used(self):
        # The parent imports `B` from `b`, but `a` never names it.
        self.assertNoCircle(
            {
                "src/lib.rs": "mod a;\nmod b;\nuse b::B;\npub struct Root;\n",
                "src/a.rs": "use super::*;\npub struct A(pub Root);\n",
                "src/b.rs": "use crate::a::A;\npub struct B;\npub fn f(_: A) {}\n",
            }
        )

    def test_own_name_shadows_the_glob(self):
        self.assertNoCircle(
            {
                "src/lib.rs": "mod a;\nmod b;\nuse b::B;\n",
                "src/a.rs": "use super::*;\npub struct B;\npub struct A(pub B);\n",
                "src/b.rs": "use crate::a::A;\npub struct B;\npub fn f(_: A) {}\n",
            }
        )

    def test_variable_named_like_a_sibling(self):
        self.assertNoCircle(
            {
                "src/lib.rs": "mod a;\nmod b;\n",
                "src/a.rs": """\
                    use super::*;
                    pub fn a(x: Option<u8>) -> u8 {
                        if let Some(b) = x { return b; }
                        0
                    }
                """,
                "src/b.rs": "use crate::a::a;\npub fn b() -> u8 { a(None) }\n",
            }
        )

    def test_comments_strings_and_tests(self):
        self.assertNoCircle(
            {
                "src/lib.rs": "mod a;\nmod b;\n",
                "src/a.rs": """\
                    // use crate::b::B;
                    /* use crate::{b::B}; */
                    pub const TEXT: &str = "crate::b::B";
                    pub const RAW: &str = r#"use crate::b::*;"#;
                    pub struct A;
                    #[cfg(test)]
                    mod tests {
                        use crate::b::B;
                    }
                    #[cfg(test)]
                    mod more;
                """,
                "src/a/more.rs": "use crate::b::B;\n",
                "src/b.rs": "use crate::a::A;\npub struct B;\npub fn f(_: A) {}\n",
            }
        )

    def test_other_crates(self):
        self.assertNoCircle(
            {
                "src/lib.rs": "mod a;\nmod b;\nmod generated;\n",
                "src/a.rs": """\
                    use std::{collections::{HashMap, HashSet}, fmt};
                    use ::b::B;
                    use crate::generated::G;
                    pub struct A;
                """,
                "src/b.rs": "use crate::a::A;\npub struct B;\npub fn f(_: A) {}\n",
            }
        )


FILLER = "".join(f"    let _x{i} = {i};\n" for i in range(99))


def long_function(name: str, indent: str = "") -> str:
    """A function of 101 lines: its signature, 99 lines and its closing brace."""
    return textwrap.indent(f"fn {name}() {{\n{FILLER}}}\n", indent)


class FunctionLength(unittest.TestCase):
    def check(self, files: dict) -> subprocess.CompletedProcess:
        return run("check_function_length.py", files)

    def assertLong(self, files: dict, name: str) -> None:
        result = self.check(files)
        self.assertEqual(result.returncode, 1, f"no long function found:\n{result.stderr}")
        self.assertIn(f"fn {name} is 101 lines", result.stderr)

    # The ways the old script was fooled.

    def test_after_a_test_module_declaration(self):
        self.assertLong({"src/lib.rs": "#[cfg(test)]\nmod tests;\n\n" + long_function("late")}, "late")

    def test_after_a_test_module(self):
        source = "#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() {}\n}\n\n" + long_function("late")
        self.assertLong({"src/lib.rs": source}, "late")

    def test_closing_brace_in_a_string(self):
        # A line `}` inside a raw string once ended the function there.
        body = 'fn hidden() {\n    let _s = r#"\n}\n"#;\n' + "".join(f"    let _x{i} = {i};\n" for i in range(96))
        self.assertLong({"src/lib.rs": body + "}\n"}, "hidden")

    # What must pass, and what is test code.

    def test_one_hundred_lines_pass(self):
        source = "fn short() {\n" + "".join(f"    let _x{i} = {i};\n" for i in range(98)) + "}\n"
        result = self.check({"src/lib.rs": source})
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_test_code_is_listed_apart(self):
        result = self.check(
            {
                "src/lib.rs": textwrap.dedent(
                    """\
                    pub trait T {
                        fn declared();
                    }
                    #[cfg(test)]
                    mod checks;
                    #[cfg(test)]
                    mod inline {
                    """
                )
                + long_function("inline_test", "    ")
                + "}\n"
                + "#[cfg(test)]\nimpl Helper {\n"
                + long_function("test_only_method", "    ")
                + "}\n"
                + "pub fn after() {}\n",
                "src/checks.rs": "mod deeper;\n" + long_function("in_a_test_file"),
                "src/checks/deeper.rs": long_function("in_a_test_submodule"),
                "tests/integration.rs": long_function("integration"),
            }
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stderr.splitlines()
        for name in ("inline_test", "test_only_method", "in_a_test_file", "in_a_test_submodule"):
            found = [line for line in lines if f"fn {name} is 101 lines" in line]
            self.assertEqual(len(found), 1, result.stderr)
            self.assertTrue(found[0].startswith("function length, test code (not failing): "), found[0])
        self.assertNotIn("integration", result.stderr)


class ApiSurface(unittest.TestCase):
    """scripts/api_surface.py: a change to a crate's public items fails `--check` with the
    diff; a private change, a body's change or test code does not."""

    BASE = {
        "src/lib.rs": """
            pub mod ids;
            pub use ids::Id;
            /// A documented function.
            pub fn run(input: &str) -> Result<u64, String> { let x = 1; Ok(x) }
            fn private() {}
            #[cfg(test)]
            mod tests { pub fn helper() {} }
            """,
        "src/ids.rs": """
            #[derive(Debug)]
            pub struct Id(u64);
            impl Id {
                pub const fn new(n: u64) -> Self { Self(n) }
                pub(crate) fn inner(&self) -> u64 { self.0 }
            }
            pub enum Kind {
                #[default]
                Plain,
                Tagged { tag: String },
            }
            impl std::fmt::Display for Id {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { Ok(()) }
            }
            """,
    }

    def check(self, changed: dict) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as root:
            crate = pathlib.Path(root, "demo")
            for name, text in self.BASE.items():
                (crate / name).parent.mkdir(parents=True, exist_ok=True)
                (crate / name).write_text(textwrap.dedent(text))
            script = [sys.executable, str(SCRIPTS / "api_surface.py"), "--crate", str(crate)]
            subprocess.run(script + ["--write"], check=True)
            listed = (crate / "API.txt").read_text()
            for name, text in changed.items():
                (crate / name).write_text(textwrap.dedent(text))
            result = subprocess.run(script + ["--check"], capture_output=True, text=True, check=False)
            result.listed = listed
            return result

    def test_the_surface_lists_public_items_with_their_signatures(self):
        listed = self.check({}).listed
        for line in (
            "crate | pub fn run(input:&str)-> Result<u64, String>",
            "crate | pub use ids::Id",
            "ids | pub struct Id(u64)",
            "ids | impl Id | pub const fn new(n:u64)-> Self",
            "ids | pub enum Kind | Plain",
            "ids | pub enum Kind | Tagged{tag:String}",
            "ids | impl std::fmt::Display for Id",
        ):
            self.assertIn(line + "\n", listed)
        for absent in ("private", "inner", "helper", "let x"):
            self.assertNotIn(absent, listed)

    def test_a_changed_signature_a_new_item_or_variant_fails_with_the_diff(self):
        for name, text in (
            ("src/lib.rs", self.BASE["src/lib.rs"].replace("input: &str", "input: String")),
            ("src/lib.rs", self.BASE["src/lib.rs"] + "pub const LIMIT: u64 = 3;\n"),
            ("src/ids.rs", self.BASE["src/ids.rs"].replace("Plain,", "Plain,\n    Other,")),
        ):
            result = self.check({name: text})
            self.assertEqual(result.returncode, 1, f"{name}: {result.stderr}")
            self.assertIn("api_surface.py --write", result.stderr)
            self.assertIn("\n+", result.stderr)

    def test_bodies_private_items_and_tests_change_nothing(self):
        lib = self.BASE["src/lib.rs"]
        changed = lib.replace("let x = 1;", "let x = 2;").replace("fn private() {}", "fn private2() {}")
        changed = changed.replace("pub fn helper() {}", "pub fn helper2() {}")
        result = self.check({"src/lib.rs": changed})
        self.assertEqual(result.returncode, 0, result.stderr)


if __name__ == "__main__":
    unittest.main()
