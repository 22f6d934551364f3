//! TypeScript cells: types are stripped before V8 compiles the module; positions stay the
//! model's own; constructs that need a transform are refused with their position.

use crate::harness::run;

#[test]
fn typescript_syntax_runs() {
    let r = run(r#"
        import type { Something } from "nowhere";
        export type Pair<T> = [T, T];
        interface User { name: string; age?: number }
        type Id = string | number;
        declare const injected: number;
        declare function external(x: number): void;
        function first<T>(items: T[], fallback?: T): T | undefined {
            return items.length > 0 ? items[0] : fallback;
        }
        const users: User[] = [{ name: "Ada" }, { name: "Alan", age: 41 }];
        const id: Id = 7;
        const names = users.map((u: User): string => u.name) as string[];
        const config = { mode: "fast" } satisfies Record<string, string>;
        const maybe: string | null = names.length ? names[0] : null;
        const pair: Pair<number> = [1, 2];
        class Box<T> {
            private value: T;
            constructor(value: T) { this.value = value; }
            get(): T { return this.value; }
        }
        const echoed = await tools.echo<{ n: number }>({ n: 1 }) as { n: number };
        text(first<string>(names)!);
        text(maybe!.length);
        text(String(id) + config.mode + pair.join("") + new Box<number>(5).get() + echoed.n);
        const tuple = ["a", 1] as const;
        text(tuple.length);
    "#);
    assert_eq!(r.ok_texts(), ["Ada", "3", "7fast1251", "2"]);
}

#[test]
fn plain_javascript_errors_are_v8s_own() {
    assert_eq!(run("*").error(), Some("SyntaxError: Unexpected token '*'"));
    let r = run("const x = ;");
    assert_eq!(r.error(), Some("SyntaxError: Unexpected token ';'"));
}

#[test]
fn runtime_errors_keep_the_lines_and_columns_of_the_typescript() {
    let r = run(
        "interface Row {\n  id: number;\n  name: string;\n}\nconst rows: Row[] = [];\nfunction fail(reason: string): never {\n  throw new Error(reason);\n}\nfail(\"line 7\" as string);\n",
    );
    let error = r.error().expect("the cell fails");
    assert!(
        error.starts_with("Error: line 7\n    at fail (exec_main.mjs:7:9)"),
        "{error}"
    );
    assert!(error.contains("exec_main.mjs:9:1"), "{error}");
}

#[test]
fn typescript_syntax_errors_read_like_v8s() {
    // V8 stops at the annotation; the real error is on line 2.
    let r = run("const a: number = 1;\nconst b: number = ;\n");
    let error = r.error().expect("a syntax error");
    assert!(error.starts_with("SyntaxError: "), "{error}");
    assert!(error.ends_with("\n    at exec_main.mjs:2:19"), "{error}");
    assert!(
        !error.contains("Syntax error\n") && !error.contains("x "),
        "{error}"
    );
}

#[test]
fn constructs_that_need_a_transform_are_refused_with_their_position() {
    let cases: &[(&str, &str)] = &[
        (
            "const a: number = 1;\nenum Color { Red, Green }\ntext(a);",
            "SyntaxError: a TypeScript `enum` at line 2, column 1 is not supported: TypeScript types are stripped, not compiled, so use a plain object instead",
        ),
        (
            "namespace Util { export const x = 1; }",
            "SyntaxError: a TypeScript `namespace` with values at line 1, column 1 is not supported",
        ),
        (
            "class P {\n  constructor(private x: number) {}\n}",
            "SyntaxError: a TypeScript parameter property (`constructor(private x: T)`) at line 2, column 23 is not supported",
        ),
        (
            "import fs = require(\"fs\");",
            "SyntaxError: a TypeScript `import ... = ...` declaration at line 1, column 1 is not supported",
        ),
        (
            "const n = <number>(1 as unknown);",
            "SyntaxError: a `<T>expr` type assertion at line 1, column 11 is not supported",
        ),
        (
            "function log(t: any) {}\n@log class A {}",
            "SyntaxError: a decorator at line 2, column 1 is not supported",
        ),
        (
            "const el = <div className=\"x\">hi</div>;",
            "SyntaxError: JSX",
        ),
    ];
    for (source, expected) in cases {
        let r = run(source);
        let error = r.error().unwrap_or_else(|| panic!("{source}: no error"));
        assert!(error.starts_with(expected), "{source}:\n{error}");
    }
}

#[test]
fn hostile_typescript_ends_with_a_clear_error() {
    let deep = format!(
        "const x: number = {}1{};",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let r = run(&deep);
    let error = r.error().expect("refused");
    assert!(error.contains("too deep to strip its types"), "{error}");

    let huge = format!("const s: string = \"{}\";", "x".repeat(17 * 1024 * 1024));
    let r = run(&huge);
    assert_eq!(
        r.error(),
        Some(
            format!(
                "SyntaxError: the script is {} bytes, more than the limit of 16777216 bytes",
                huge.len()
            )
            .as_str()
        )
    );
}
