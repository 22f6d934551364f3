//! What a cell could read from outside other than through its owner: the clock, random
//! numbers, and the garbage collector's timing. A cell is replayed from its journal
//! (`session::actor::journal`), so everything it reads must either be logged or be the
//! same on a fresh isolate (CONTRACT §7, "Durable cells"):
//!
//! - `Date.now()`, `new Date()`, `Date()` and `Intl.DateTimeFormat`'s `format` and
//!   `formatToParts` without a date read the cell's clock: a native function that returns
//!   the logged readings first and then real time, each live reading reported to the
//!   owner ([`super::super::state::CellState::now_ms`]);
//! - `Math.random()` draws from a generator seeded per cell (the seed is in the cell's
//!   configuration, and so in its journal);
//! - `WeakRef` keeps its target while the reference lives, and `FinalizationRegistry`
//!   never calls its cleanup callback: both are what the language allows an engine to do,
//!   and neither then depends on when the collector runs.
//!
//! The JavaScript below is compiled once per context (into the startup snapshot's), before
//! any cell code, and captures the intrinsics it uses at that moment.

use v8::MapFnTo;

/// Evaluates to a function of the native clock and random functions, which returns the
/// installer: a function of the global object that puts the replacements in place.
const SOURCE: &str = r#"((clock, random) => {
  "use strict";
  const NativeDate = Date;
  const NativeWeakRef = WeakRef;
  const NativeRegistry = FinalizationRegistry;
  const apply = Reflect.apply;
  const construct = Reflect.construct;
  const defineProperty = Object.defineProperty;
  const getDescriptor = Object.getOwnPropertyDescriptor;
  const dateToString = NativeDate.prototype.toString;
  const weakMapSet = WeakMap.prototype.set;
  const TypeErrorCtor = TypeError;

  const hidden = { writable: true, enumerable: false, configurable: true };
  const value = (v) => ({ ...hidden, value: v });

  const DateCtor = function Date(...args) {
    if (new.target === undefined) {
      return apply(dateToString, new NativeDate(clock()), []);
    }
    return construct(NativeDate, args.length === 0 ? [clock()] : args, new.target);
  };
  defineProperty(DateCtor, "length", { value: 7, configurable: true });
  defineProperty(DateCtor, "prototype", {
    value: NativeDate.prototype, writable: false, enumerable: false, configurable: false,
  });
  defineProperty(DateCtor, "now", value(clock));
  defineProperty(DateCtor, "parse", value(NativeDate.parse));
  defineProperty(DateCtor, "UTC", value(NativeDate.UTC));
  defineProperty(NativeDate.prototype, "constructor", value(DateCtor));

  const formats = Intl.DateTimeFormat.prototype;
  const formatGetter = getDescriptor(formats, "format").get;
  const formatToPartsNative = formats.formatToParts;
  defineProperty(formats, "format", {
    get: function format() {
      const bound = apply(formatGetter, this, []);
      return (date) => bound(date === undefined ? clock() : date);
    },
    enumerable: false,
    configurable: true,
  });
  defineProperty(formats, "formatToParts", value(function formatToParts(date) {
    return apply(formatToPartsNative, this, [date === undefined ? clock() : date]);
  }));

  const strong = new WeakMap();
  const WeakRefCtor = class WeakRef extends NativeWeakRef {
    constructor(target) {
      super(target);
      apply(weakMapSet, strong, [this, target]);
    }
  };
  const RegistryCtor = class FinalizationRegistry extends NativeRegistry {
    constructor(cleanup) {
      if (typeof cleanup !== "function") {
        throw new TypeErrorCtor("FinalizationRegistry: cleanup must be callable");
      }
      super(() => {});
    }
  };

  return (global) => {
    defineProperty(global, "Date", value(DateCtor));
    defineProperty(global, "WeakRef", value(WeakRefCtor));
    defineProperty(global, "FinalizationRegistry", value(RegistryCtor));
    defineProperty(global.Math, "random", value(random));
  };
})"#;

/// The installer for the current context (see [`SOURCE`]); `None` only if V8 refused to
/// make it, which it does not for this fixed source before any cell code ran.
pub(super) fn new_installer<'s>(
    scope: &mut v8::PinScope<'s, '_>,
) -> Option<v8::Local<'s, v8::Value>> {
    let clock = super::new_function(scope, "now", clock_helper.map_fn_to());
    let random = super::new_function(scope, "random", random_helper.map_fn_to());
    let source = v8::String::new(scope, SOURCE)?;
    let factory = v8::Script::compile(scope, source, None)?.run(scope)?;
    let factory = v8::Local::<v8::Function>::try_from(factory).ok()?;
    let receiver = v8::undefined(scope).into();
    factory.call(scope, receiver, &[clock.into(), random.into()])
}

/// Runs `installer` (from [`new_installer`]) on the current context's global object.
pub(super) fn install(scope: &v8::PinScope<'_, '_>, installer: v8::Local<'_, v8::Value>) {
    let Ok(installer) = v8::Local::<v8::Function>::try_from(installer) else {
        return;
    };
    let global = scope.get_current_context().global(scope);
    let receiver = v8::undefined(scope).into();
    if installer.call(scope, receiver, &[global.into()]).is_none() {
        tracing::error!("the deterministic globals could not be installed");
    }
}

/// The native callbacks of this module, for the startup snapshot's external references.
pub(super) fn external_references() -> [v8::FunctionCallback; 2] {
    [clock_helper.map_fn_to(), random_helper.map_fn_to()]
}

/// `Date.now()` and every reading of the cell's clock: milliseconds since the epoch.
fn clock_helper<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    _args: v8::FunctionCallbackArguments<'s>,
    mut rv: v8::ReturnValue<'s, v8::Value>,
) {
    let now = match super::own_state(scope) {
        Some(state) => state.borrow_mut().now_ms(),
        // Outside a cell (a context being prepared): real time, logged nowhere.
        None => super::super::state::wall_clock_ms(),
    };
    rv.set_double(now as f64);
}

/// `Math.random()`: the cell's seeded generator.
fn random_helper<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    _args: v8::FunctionCallbackArguments<'s>,
    mut rv: v8::ReturnValue<'s, v8::Value>,
) {
    let value = match super::own_state(scope) {
        Some(state) => state.borrow_mut().next_random(),
        None => 0.5,
    };
    rv.set_double(value);
}
