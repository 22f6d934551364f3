//! `as_settled(inputs)` and `stream_settled(inputs, emit)` (contract section 8.2): a
//! cell's promises, as they settle.
//!
//! These two are JavaScript, not native functions: they are promise plumbing (reactions,
//! an async iterator, `await`), which JavaScript states directly and V8 runs without a
//! crossing per step. The script is compiled into each fresh context before any cell code
//! runs, and it captures the intrinsics it uses (`Promise`, its `resolve` and `then`,
//! `Reflect.apply`, `Map`'s methods, `TypeError`) at that moment, so a cell that replaces
//! those globals later changes nothing here. It defines no global of its own: it evaluates
//! to the two functions, which `install_base` defines as read-only globals.

use super::v8_str;
use code_mode_protocol::texts::STREAM_SETTLED_CALLBACK;
use std::rc::Rc;
use std::sync::OnceLock;

/// The script, evaluated once per context; `STREAM_SETTLED_CALLBACK` is spliced in.
const SOURCE: &str = r#"(() => {
  "use strict";
  const apply = Reflect.apply;
  const PromiseCtor = Promise;
  const resolve = Promise.resolve;
  const then = Promise.prototype.then;
  const mapSize = Object.getOwnPropertyDescriptor(Map.prototype, "size").get;
  const mapForEach = Map.prototype.forEach;
  const TypeErrorCtor = TypeError;
  const iteratorKey = Symbol.iterator;
  const asyncIteratorKey = Symbol.asyncIterator;

  const resolved = (value) => apply(resolve, PromiseCtor, [value]);

  const isMap = (value) => {
    try {
      apply(mapSize, value, []);
      return true;
    } catch {
      return false;
    }
  };

  // [key, input] pairs, in iteration order: the Map's keys, or 0, 1, 2, ...
  const entriesOf = (inputs) => {
    const entries = [];
    if (isMap(inputs)) {
      apply(mapForEach, inputs, [(value, key) => {
        entries[entries.length] = [key, value];
      }]);
      return entries;
    }
    if (inputs == null || typeof inputs[iteratorKey] !== "function") {
      throw new TypeErrorCtor("as_settled expects an iterable or a Map of promises");
    }
    let index = 0;
    for (const input of inputs) {
      entries[entries.length] = [index, input];
      index += 1;
    }
    return entries;
  };

  function as_settled(inputs) {
    const entries = entriesOf(inputs);
    const queue = [];
    let queueHead = 0;
    const waiters = [];
    let waiterHead = 0;
    let outstanding = entries.length;
    let closed = false;

    const wakeAllDone = () => {
      while (waiterHead < waiters.length) {
        const wake = waiters[waiterHead];
        waiters[waiterHead] = undefined;
        waiterHead += 1;
        wake({ value: undefined, done: true });
      }
    };
    const deliver = (result) => {
      if (closed) {
        return;
      }
      outstanding -= 1;
      if (waiterHead < waiters.length) {
        const wake = waiters[waiterHead];
        waiters[waiterHead] = undefined;
        waiterHead += 1;
        wake({ value: result, done: false });
      } else {
        queue[queue.length] = result;
      }
      if (outstanding === 0) {
        wakeAllDone();
      }
    };

    for (let position = 0; position < entries.length; position += 1) {
      const index = entries[position][0];
      let promise;
      try {
        promise = resolved(entries[position][1]);
      } catch (reason) {
        promise = new PromiseCtor((_, reject) => reject(reason));
      }
      apply(then, promise, [
        (value) => deliver({ index, status: "fulfilled", value }),
        (reason) => deliver({ index, status: "rejected", reason }),
      ]);
    }

    return {
      next() {
        if (queueHead < queue.length) {
          const result = queue[queueHead];
          queue[queueHead] = undefined;
          queueHead += 1;
          return resolved({ value: result, done: false });
        }
        if (closed || outstanding === 0) {
          return resolved({ value: undefined, done: true });
        }
        return new PromiseCtor((wake) => {
          waiters[waiters.length] = wake;
        });
      },
      return(value) {
        closed = true;
        queue.length = 0;
        queueHead = 0;
        wakeAllDone();
        return resolved({ value, done: true });
      },
      [asyncIteratorKey]() {
        return this;
      },
    };
  }

  async function stream_settled(inputs, emit) {
    if (typeof emit !== "function") {
      throw new TypeErrorCtor(STREAM_SETTLED_CALLBACK);
    }
    const results = as_settled(inputs);
    try {
      for (;;) {
        const step = await results.next();
        if (step.done) {
          return undefined;
        }
        await emit(step.value);
      }
    } finally {
      results.return();
    }
  }

  return [as_settled, stream_settled];
})()"#;

/// The settled helpers' script compiled once per isolate, context-independent: each
/// fresh context binds and runs it instead of compiling it again. Kept in an isolate slot.
struct CompiledSettled(v8::Global<v8::UnboundScript>);

/// Drops the isolate's compiled script (a snapshot creator must hold no handles when it
/// makes its blob).
pub(super) fn forget_compiled(isolate: &mut v8::Isolate) {
    isolate.remove_slot::<Rc<CompiledSettled>>();
}

/// Runs the script in the current context: `as_settled` and `stream_settled`, to be
/// defined as globals. Runs before any cell code, like the native helpers.
pub(super) fn new_functions<'s>(scope: &mut v8::PinScope<'s, '_>) -> [v8::Local<'s, v8::Value>; 2] {
    let compiled = scope.get_slot::<Rc<CompiledSettled>>().map(Rc::clone);
    let unbound = match compiled {
        Some(compiled) => v8::Local::new(scope, &compiled.0),
        None => {
            static SPLICED: OnceLock<String> = OnceLock::new();
            let source = SPLICED.get_or_init(|| {
                let quoted = js_string_literal(STREAM_SETTLED_CALLBACK);
                SOURCE.replace("STREAM_SETTLED_CALLBACK)", &format!("{quoted})"))
            });
            let source = v8_str(scope, source);
            let mut source = v8::script_compiler::Source::new(source, None);
            let unbound = v8::script_compiler::compile_unbound_script(
                scope,
                &mut source,
                v8::script_compiler::CompileOptions::NoCompileOptions,
                v8::script_compiler::NoCacheReason::NoReason,
            )
            .expect("the settled helpers' script compiles: it is fixed text");
            let global = v8::Global::new(scope, unbound);
            scope.set_slot(Rc::new(CompiledSettled(global)));
            unbound
        }
    };
    let functions = unbound
        .bind_to_current_context(scope)
        .run(scope)
        .and_then(|value| v8::Local::<v8::Array>::try_from(value).ok())
        .expect("the settled helpers' script evaluates to its two functions");
    [0, 1].map(|index| {
        functions
            .get_index(scope, index)
            .expect("the settled helpers' array holds its two functions")
    })
}

/// `text` as a JavaScript string literal (only `"` and `\` need escaping in the fixed
/// texts spliced in).
fn js_string_literal(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for character in text.chars() {
        if matches!(character, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(character);
    }
    quoted.push('"');
    quoted
}
