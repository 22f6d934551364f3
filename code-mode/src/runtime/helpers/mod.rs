//! The globals a cell sees (contract sections 2 and 8): `tools`, `ALL_TOOLS`, `text`,
//! `image`, `generatedImage`, `audio` (`media`), `store`, `load`, `notify`,
//! `yield_control`, `exit`, `setTimeout`, `clearTimeout`, `console`, and `as_settled` and
//! `stream_settled` (`settled`).
//!
//! Every helper but the two of `settled` is a native function: none of them looks up `JSON`, `Promise`, `Object` or
//! any other global the cell can replace, and tool functions carry their tool's index, so
//! the owner dispatches by index, never by a JS-visible name. Helper errors are thrown as
//! plain strings. Each helper re-checks that the cell has not stopped (`exit()`,
//! termination) after any user code it ran, so nothing takes effect after `exit()`.

use super::state::{StateRef, Timer};
use super::values::{self, Json, JsonTextError, throw_string, v8_str};
use super::{CellEvent, ToolCallRequest};
use code_mode_protocol::Surface;
use code_mode_protocol::{ContentItem, js_tool_name, stored};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::Duration;
use v8::MapFnTo;

use code_mode_protocol::texts::{self, CLEAR_TIMEOUT_ID, NOTIFY_EMPTY, SET_TIMEOUT_CALLBACK};

/// Largest timer delay honoured, in milliseconds (about 285 000 years); longer is clamped.
const MAX_TIMER_DELAY_MS: f64 = 9_007_199_254_740_991.0;

/// Globals removed from every cell's context (contract section 2).
const REMOVED_GLOBALS: [&str; 3] = ["Atomics", "SharedArrayBuffer", "WebAssembly"];

/// Why a helper did not finish normally.
enum Fail {
    /// Throw this plain string.
    Throw(String),
    /// A JS exception (or termination) is already pending: let it propagate.
    Pending,
    /// The cell has stopped (`exit()` or termination): return quietly.
    Stopped,
}

impl From<&str> for Fail {
    fn from(message: &str) -> Self {
        Fail::Throw(message.to_owned())
    }
}

type HelperResult = Result<(), Fail>;

/// The body of a helper: the scope, the call's arguments, its return value, the cell state.
type Body<'a, 's, 'i> = dyn FnOnce(
        &mut v8::PinScope<'s, 'i>,
        &v8::FunctionCallbackArguments<'s>,
        &mut v8::ReturnValue<'s, v8::Value>,
        &StateRef,
    ) -> HelperResult
    + 'a;

/// The cell state, when `scope` runs in the cell's own context (an isolate the session
/// reused may still hold an earlier cell's objects; those reach nothing).
fn own_state(scope: &v8::PinScope<'_, '_>) -> Option<StateRef> {
    let state = scope.get_slot::<StateRef>()?.clone();
    let own = state
        .borrow()
        .context
        .as_ref()
        .is_some_and(|context| *context == scope.get_current_context());
    own.then_some(state)
}

/// Runs a helper body: skips it once the cell has stopped, turns [`Fail::Throw`] into a
/// thrown string, and keeps a Rust panic from unwinding into V8 (it becomes a JS error).
fn run_helper<'s, 'i>(
    scope: &mut v8::PinScope<'s, 'i>,
    args: v8::FunctionCallbackArguments<'s>,
    mut rv: v8::ReturnValue<'s, v8::Value>,
    body: Box<Body<'_, 's, 'i>>,
) {
    let Some(state) = own_state(scope) else {
        return;
    };
    if state.borrow().stopped() {
        return;
    }
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        body(&mut *scope, &args, &mut rv, &state)
    }));
    match outcome {
        Ok(Ok(()) | Err(Fail::Pending | Fail::Stopped)) => {}
        Ok(Err(Fail::Throw(message))) => {
            if !state.borrow().stopped() {
                throw_string(scope, &message);
            }
        }
        Err(_) => {
            tracing::error!("a code-mode helper panicked");
            throw_string(scope, texts::HELPER_INTERNAL_ERROR);
        }
    }
}

/// Defines a helper: a V8 function callback that runs its body through [`run_helper`].
macro_rules! helper {
    ($(#[$doc:meta])* $name:ident, |$scope:pat_param, $args:pat_param, $rv:pat_param, $state:pat_param| $body:expr) => {
        $(#[$doc])*
        pub(super) fn $name<'s>(
            scope: &mut v8::PinScope<'s, '_>,
            args: v8::FunctionCallbackArguments<'s>,
            rv: v8::ReturnValue<'s, v8::Value>,
        ) {
            $crate::runtime::helpers::run_helper(scope, args, rv, Box::new(|$scope, $args, $rv, $state| $body));
        }
    };
}

mod determinism;
mod media;
mod settled;
mod tools;

pub(crate) use tools::{BuiltTools, build_tools, define_tools};

/// Reports an event, or [`Fail::Stopped`] if the cell stopped meanwhile.
fn emit(state: &StateRef, event: CellEvent) -> HelperResult {
    if state.borrow_mut().emit(event) {
        Ok(())
    } else {
        Err(Fail::Stopped)
    }
}

/// Fails with [`Fail::Stopped`] if the cell stopped (user code the helper ran may have
/// called `exit()`).
fn ensure_running(state: &StateRef) -> HelperResult {
    if state.borrow().stopped() {
        Err(Fail::Stopped)
    } else {
        Ok(())
    }
}

/// `object[key]`, running getters and proxy traps like JS would.
fn get<'s>(
    scope: &v8::PinScope<'s, '_>,
    object: v8::Local<'s, v8::Object>,
    key: &str,
) -> Result<v8::Local<'s, v8::Value>, Fail> {
    let key = v8_str(scope, key);
    object.get(scope, key.into()).ok_or(Fail::Pending)
}

/// The value as a plain object (not `null`, not a function, not an array).
fn as_plain_object(value: v8::Local<'_, v8::Value>) -> Option<v8::Local<'_, v8::Object>> {
    if value.is_function() || value.is_array() {
        return None;
    }
    v8::Local::<v8::Object>::try_from(value).ok()
}

/// A non-empty string value, copied with at most `max_bytes` (see
/// [`values::bounded_string`]), or `None`.
fn non_empty_string(
    scope: &v8::PinScope<'_, '_>,
    value: v8::Local<'_, v8::Value>,
    max_bytes: usize,
) -> Option<String> {
    values::bounded_value_string(scope, value, max_bytes).filter(|text| !text.is_empty())
}

/// The output bytes the cell may still produce, as a copy bound: output beyond it is
/// dropped behind the cap's marker, so a longer string is never copied whole.
fn output_room(state: &StateRef) -> usize {
    usize::try_from(state.borrow().output_room()).unwrap_or(usize::MAX)
}

/// The most UTF-16 units a `store`/`load` key may have. Keys are never cut (two long keys
/// would alias), so a longer key is refused.
const KEY_MAX_CHARS: usize = 64 * 1024;

/// A `store`/`load` key: `ToString(key)`, as upstream converts it (`store(42, v)` uses the
/// key `"42"`). A symbol, a conversion that throws and a key longer than
/// [`KEY_MAX_CHARS`] are refused; `helper` names the helper in the messages.
fn storage_key(
    scope: &v8::PinScope<'_, '_>,
    key: v8::Local<'_, v8::Value>,
    helper: &str,
    state: &StateRef,
) -> Result<String, Fail> {
    if key.is_symbol() {
        return Err(Fail::Throw(texts::key_must_be_string(helper)));
    }
    let key = key.to_string(scope).ok_or(Fail::Pending)?;
    ensure_running(state)?;
    if key.length() > KEY_MAX_CHARS {
        return Err(Fail::Throw(texts::key_too_long(
            helper,
            key.length(),
            KEY_MAX_CHARS,
        )));
    }
    Ok(key.to_rust_string_lossy(scope))
}

// ---------------------------------------------------------------------------------------
// Installation
// ---------------------------------------------------------------------------------------

/// The globals [`install_base`] defines, in the order it defines them: the native helpers
/// of [`base_functions`], then `console`, then the two of `settled`.
const HELPER_NAMES: [&str; 14] = [
    "text",
    "image",
    "generatedImage",
    "audio",
    "store",
    "load",
    "notify",
    "yield_control",
    "exit",
    "setTimeout",
    "clearTimeout",
    "console",
    "as_settled",
    "stream_settled",
];

/// Installs every helper that does not depend on the cell on the context's global object
/// and removes the forbidden globals. Runs before the cell is known (on a prepared
/// isolate); the helpers find the cell's state in the isolate slot when they are called.
pub(crate) fn install_base(scope: &mut v8::PinScope<'_, '_>, surface: Surface) {
    let helpers = new_helpers(scope);
    define_helpers(scope, &helpers, surface);
}

/// The values of [`HELPER_NAMES`], made in the current context. The startup snapshot
/// keeps them as its context's data (`super::snapshot`), so that a context deserialised
/// from it defines them on its global object only once V8 has finished it, in the same
/// order as [`install_base`].
pub(crate) fn new_helpers<'s>(scope: &mut v8::PinScope<'s, '_>) -> Vec<v8::Local<'s, v8::Value>> {
    let mut helpers = Vec::with_capacity(HELPER_NAMES.len());
    for (name, callback) in base_functions() {
        helpers.push(new_function(scope, name, callback).into());
    }
    let console = v8::Object::new(scope);
    for method in ["log", "info", "warn", "error", "debug"] {
        let function = new_function(scope, method, console_helper.map_fn_to());
        define_constant(scope, console, method, function.into());
    }
    freeze(scope, console);
    helpers.push(console.into());
    helpers.extend(settled::new_functions(scope));
    debug_assert_eq!(helpers.len(), HELPER_NAMES.len());
    // Last, and no global of its own: the installer of the deterministic globals.
    match determinism::new_installer(scope) {
        Some(installer) => helpers.push(installer),
        None => tracing::error!("the deterministic globals could not be made"),
    }
    helpers
}

/// Defines `helpers` (the values of [`HELPER_NAMES`], in order) as the globals of
/// `surface`, in place of V8's own `console`, removes the globals a cell must not have
/// (contract §2) and puts the deterministic clock, random numbers and weak references in
/// place (`determinism`; the value after the named helpers).
///
/// The contract's surface: read-only globals in [`HELPER_NAMES`] order. Codex's: no
/// `console`, a `content` helper, plain (writable, configurable) properties in
/// [`CODEX_ORDER`], with `tools` and `ALL_TOOLS` first as placeholders that each cell's
/// own definitions replace in place.
pub(crate) fn define_helpers(
    scope: &v8::PinScope<'_, '_>,
    helpers: &[v8::Local<'_, v8::Value>],
    surface: Surface,
) {
    let global = scope.get_current_context().global(scope);
    for name in REMOVED_GLOBALS.into_iter().chain(["console"]) {
        let key = v8_str(scope, name);
        global.delete(scope, key.into());
    }
    if let Some(installer) = helpers.get(HELPER_NAMES.len()) {
        determinism::install(scope, *installer);
    }
    match surface {
        Surface::Contract => {
            for (name, value) in HELPER_NAMES.into_iter().zip(helpers) {
                define_constant(scope, global, name, *value);
            }
        }
        Surface::Codex => {
            let helper = |name: &str| {
                HELPER_NAMES
                    .iter()
                    .position(|known| *known == name)
                    .and_then(|index| helpers.get(index).copied())
            };
            define_with(
                scope,
                global,
                "tools",
                v8::Object::new(scope).into(),
                surface,
            );
            define_with(
                scope,
                global,
                "ALL_TOOLS",
                v8::Array::new(scope, 0).into(),
                surface,
            );
            for name in CODEX_ORDER {
                let value = if name == "content" {
                    content_helper(scope, helper("text"), helper("image"), helper("audio"))
                } else {
                    helper(name)
                };
                if let Some(value) = value {
                    define_with(scope, global, name, value, surface);
                }
            }
        }
    }
}

/// The helpers of Codex's surface after `tools` and `ALL_TOOLS`, in Codex's order.
pub(crate) const CODEX_ORDER: [&str; 14] = [
    "clearTimeout",
    "setTimeout",
    "text",
    "content",
    "image",
    "audio",
    "generatedImage",
    "store",
    "load",
    "notify",
    "yield_control",
    "exit",
    "as_settled",
    "stream_settled",
];

/// `content(block)` of Codex's surface: one MCP content block, or any other iterable of
/// them, each emitted through `text`, `image` or `audio` (held in a closure, so that a
/// cell replacing the globals does not change it). `resource` and `resource_link` blocks
/// become their JSON text; anything else throws `content expects one MCP ContentBlock`.
const CONTENT_SOURCE: &str = r#"(function (text, image, audio) {
  const fail = "content expects one MCP ContentBlock";
  const object = (value) => value !== null && typeof value === "object";
  const mime = (block) => typeof block.mimeType === "string" ? block.mimeType : "application/octet-stream";
  const emit = (block) => {
    if (!object(block)) throw fail;
    switch (block.type) {
      case "text":
        if (typeof block.text !== "string") throw fail;
        return void text(block.text);
      case "image":
        if (typeof block.data !== "string") throw fail;
        return void image({ type: "image", data: block.data, mimeType: mime(block), _meta: block._meta });
      case "audio":
        if (typeof block.data !== "string") throw fail;
        return void audio("data:" + mime(block) + ";base64," + block.data);
      case "resource":
        if (!object(block.resource)) throw fail;
        return void text(JSON.stringify(block));
      case "resource_link":
        if (typeof block.uri !== "string") throw fail;
        return void text(JSON.stringify(block));
      default:
        throw fail;
    }
  };
  return function content(value) {
    if (typeof value !== "string" && value != null && typeof value[Symbol.iterator] === "function") {
      for (const block of value) emit(block);
      return;
    }
    emit(value);
  };
})"#;

fn content_helper<'s>(
    scope: &v8::PinScope<'s, '_>,
    text: Option<v8::Local<'s, v8::Value>>,
    image: Option<v8::Local<'s, v8::Value>>,
    audio: Option<v8::Local<'s, v8::Value>>,
) -> Option<v8::Local<'s, v8::Value>> {
    let source = v8::String::new(scope, CONTENT_SOURCE)?;
    let factory = v8::Script::compile(scope, source, None)?.run(scope)?;
    let factory = v8::Local::<v8::Function>::try_from(factory).ok()?;
    let receiver = v8::undefined(scope).into();
    factory.call(scope, receiver, &[text?, image?, audio?])
}

/// The global helpers that are native functions, by name.
fn base_functions() -> [(&'static str, v8::FunctionCallback); 11] {
    [
        ("text", text_helper.map_fn_to()),
        ("image", media::image_helper.map_fn_to()),
        ("generatedImage", media::generated_image_helper.map_fn_to()),
        ("audio", media::audio_helper.map_fn_to()),
        ("store", store_helper.map_fn_to()),
        ("load", load_helper.map_fn_to()),
        ("notify", notify_helper.map_fn_to()),
        ("yield_control", yield_control_helper.map_fn_to()),
        ("exit", exit_helper.map_fn_to()),
        ("setTimeout", set_timeout_helper.map_fn_to()),
        ("clearTimeout", clear_timeout_helper.map_fn_to()),
    ]
}

/// Every native callback [`new_helpers`] makes functions of, for the startup snapshot
/// (`super::snapshot`): V8 stores them by their index in this list.
pub(crate) fn external_references() -> Vec<v8::ExternalReference> {
    base_functions()
        .into_iter()
        .map(|(_, callback)| callback)
        .chain([console_helper.map_fn_to()])
        .chain(determinism::external_references())
        .map(|function| v8::ExternalReference { function })
        .collect()
}

/// Drops what the isolate keeps for later contexts (see `settled::forget_compiled`, and
/// the tool functions' templates).
pub(crate) fn forget_isolate_cache(isolate: &mut v8::Isolate) {
    settled::forget_compiled(isolate);
    isolate.remove_slot::<ToolTemplates>();
    isolate.remove_slot::<tools::EagerStringsSlot>();
}

/// A tool's function: the tool helper bound to the tool's index (named later). A fresh
/// function of the current context, instantiated from the isolate's template for the
/// index (made once per isolate, for the first [`TEMPLATED_TOOLS`] indices): a context
/// made for every cell costs an instantiation per tool, not a template and a function.
pub(crate) fn new_tool_function<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    index: usize,
) -> v8::Local<'s, v8::Function> {
    if index < TEMPLATED_TOOLS {
        let templates = isolate_cache::<ToolTemplates>(scope);
        let template = {
            let mut templates = templates.borrow_mut();
            if templates.len() <= index {
                templates.resize(index + 1, None);
            }
            match &templates[index] {
                Some(template) => v8::Local::new(scope, template),
                None => {
                    let data = v8::Number::new(scope, index as f64).into();
                    let template = v8::FunctionTemplate::builder_raw(tool_helper.map_fn_to())
                        .data(data)
                        .constructor_behavior(v8::ConstructorBehavior::Throw)
                        .build(scope);
                    templates[index] = Some(v8::Global::new(scope, template));
                    template
                }
            }
        };
        return template
            .get_function(scope)
            .expect("instantiating a native function cannot fail before any user code ran");
    }
    let index = v8::Number::new(scope, index as f64).into();
    native_function(scope, tool_helper.map_fn_to(), Some(index))
}

/// What the isolate keeps in its slot of type `T` (a shared cell, made empty on first
/// use), for contexts to come.
pub(super) fn isolate_cache<T: Default + Clone + 'static>(scope: &mut v8::PinScope<'_, '_>) -> T {
    if let Some(kept) = scope.get_slot::<T>() {
        return kept.clone();
    }
    let kept = T::default();
    scope.set_slot(kept.clone());
    kept
}

/// The tool indices whose function templates an isolate keeps ([`new_tool_function`]);
/// a tool further down the list (a deferred one among thousands) gets a function made
/// from nothing.
const TEMPLATED_TOOLS: usize = 1024;

/// An isolate's function templates of tool functions, by index (an isolate slot).
type ToolTemplates = Rc<std::cell::RefCell<Vec<Option<v8::Global<v8::FunctionTemplate>>>>>;

fn new_function<'s>(
    scope: &v8::PinScope<'s, '_>,
    name: &str,
    callback: v8::FunctionCallback,
) -> v8::Local<'s, v8::Function> {
    let function = native_function(scope, callback, None);
    function.set_name(v8_str(scope, name));
    function
}

/// A native function that throws when called with `new`, carrying `data`.
fn native_function<'s>(
    scope: &v8::PinScope<'s, '_>,
    callback: v8::FunctionCallback,
    data: Option<v8::Local<'s, v8::Value>>,
) -> v8::Local<'s, v8::Function> {
    let mut builder =
        v8::Function::builder_raw(callback).constructor_behavior(v8::ConstructorBehavior::Throw);
    if let Some(data) = data {
        builder = builder.data(data);
    }
    builder
        .build(scope)
        .expect("creating a native function cannot fail before any user code ran")
}

/// Defines a read-only, non-deletable property.
fn define_constant(
    scope: &v8::PinScope<'_, '_>,
    object: v8::Local<'_, v8::Object>,
    name: &str,
    value: v8::Local<'_, v8::Value>,
) {
    define_with(scope, object, name, value, Surface::Contract);
}

/// Defines `name` on `object` as `surface` has its globals: read-only and permanent on the
/// contract's, a plain writable, configurable property on Codex's.
pub(crate) fn define_with(
    scope: &v8::PinScope<'_, '_>,
    object: v8::Local<'_, v8::Object>,
    name: &str,
    value: v8::Local<'_, v8::Value>,
    surface: Surface,
) {
    let key = v8_str(scope, name);
    object.define_own_property(scope, key.into(), value, global_attributes(surface));
}

/// The attributes of a global helper on `surface` (see [`define_with`]).
pub(crate) fn global_attributes(surface: Surface) -> v8::PropertyAttribute {
    match surface {
        Surface::Contract => v8::PropertyAttribute::READ_ONLY | v8::PropertyAttribute::DONT_DELETE,
        Surface::Codex => v8::PropertyAttribute::NONE,
    }
}

fn freeze(scope: &v8::PinScope<'_, '_>, object: v8::Local<'_, v8::Object>) {
    object.set_integrity_level(scope, v8::IntegrityLevel::Frozen);
}

// ---------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------

helper! {
    text_helper, |scope, args, _rv, state| {
        let value = args.get(0);
        // A string longer than the room left can only reach the cap: skip copying it.
        // (Its UTF-8 form has at least as many bytes as it has UTF-16 units.)
        if let Ok(string) = v8::Local::<v8::String>::try_from(value)
            && string.length() as u64 > state.borrow().output_room()
        {
            let running = state.borrow_mut().reach_output_cap();
            return if running { Ok(()) } else { Err(Fail::Stopped) };
        }
        let text = values::display_string(scope, value, output_room(state)).ok_or(Fail::Pending)?;
        emit(state, CellEvent::Output(ContentItem::text(text)))
    }
}

helper! {
    console_helper, |scope, args, _rv, state| {
        let mut parts = Vec::with_capacity(usize::try_from(args.length()).unwrap_or(0));
        // The parts share the room left: once it is used up, each further part is only its
        // truncation marker, and the joined line reaches the cap.
        let mut room = output_room(state);
        for index in 0..args.length() {
            let part =
                values::display_string(scope, args.get(index), room).ok_or(Fail::Pending)?;
            room = room.saturating_sub(part.len() + 1);
            parts.push(part);
        }
        emit(state, CellEvent::Output(ContentItem::text(parts.join(" "))))
    }
}

// ---------------------------------------------------------------------------------------
// Stored values
// ---------------------------------------------------------------------------------------

helper! {
    store_helper, |scope, args, _rv, state| {
        let key = storage_key(scope, args.get(0), "store", state)?;
        let json = serialize_for_store(scope, args.get(1), &key, state)?;
        ensure_running(state)?;
        let mut state = state.borrow_mut();
        // The cell's view of the map with this write: the entry it replaces (its own
        // earlier write, else the snapshot's) goes, the new one comes.
        let replaced = state
            .writes
            .get(&key)
            .or_else(|| state.stored.get(&key))
            .map_or(0, |old| stored::entry_bytes(&key, old));
        let bytes = state.stored_bytes - replaced + stored::entry_bytes(&key, &json);
        if let Some(max_bytes) = state.max_stored_bytes
            && bytes > max_bytes
            && bytes > state.stored_bytes
        {
            return Err(Fail::Throw(texts::stored_values_full(&key, bytes, max_bytes)));
        }
        state.stored_bytes = bytes;
        state.writes.insert(key, json.into());
        Ok(())
    }
}

/// Why a value could not become JSON, from the exception its conversion threw: the depth
/// limit for a stack overflow, else the exception's message. No exception means the cell
/// is being stopped.
fn conversion_failure(
    scope: &mut v8::PinScope<'_, '_>,
    exception: Option<v8::Local<'_, v8::Value>>,
) -> Result<String, Fail> {
    let exception = exception.ok_or(Fail::Pending)?;
    Ok(if values::is_stack_overflow(scope, exception) {
        values::depth_error_detail()
    } else {
        values::exception_message(scope, exception)
    })
}

/// JSON text of a value to store, with the contract's errors.
fn serialize_for_store(
    scope: &mut v8::PinScope<'_, '_>,
    value: v8::Local<'_, v8::Value>,
    key: &str,
    state: &StateRef,
) -> Result<String, Fail> {
    v8::tc_scope!(let tc, scope);
    let json = values::stringify(tc, value);
    if tc.has_terminated() {
        return Err(Fail::Stopped);
    }
    ensure_running(state)?;
    let json = match json {
        Some(json) => json,
        None => {
            let exception = tc.exception();
            let detail = conversion_failure(tc, exception)?;
            return Err(Fail::Throw(texts::failed_to_serialize(&detail)));
        }
    };
    let text = match json {
        Json::Nothing => {
            return Err(Fail::Throw(texts::unable_to_store(key)));
        }
        Json::Text(text) => text,
    };
    // Stored values are tool payloads' size at most: they reach later cells the same way.
    let max_bytes = state.borrow().limits.max_tool_payload_bytes;
    values::json_text(tc, text, max_bytes).map_err(|error| {
        let detail = match error {
            JsonTextError::TooLarge(bytes) => texts::value_too_large(bytes, max_bytes),
            JsonTextError::TooDeep => values::depth_error_detail(),
        };
        Fail::Throw(texts::failed_to_serialize(&detail))
    })
}

helper! {
    load_helper, |scope, args, rv, state| {
        let key = storage_key(scope, args.get(0), "load", state)?;
        let json = {
            let state = state.borrow();
            state
                .writes
                .get(&key)
                .or_else(|| state.stored.get(&key))
                .cloned()
        };
        if let Some(json) = json {
            let value = values::parse(scope, &json).ok_or(Fail::Pending)?;
            rv.set(value);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Control
// ---------------------------------------------------------------------------------------

helper! {
    notify_helper, |scope, args, _rv, state| {
        let text =
            values::display_string(scope, args.get(0), output_room(state)).ok_or(Fail::Pending)?;
        if text.trim().is_empty() {
            return Err(NOTIFY_EMPTY.into());
        }
        emit(state, CellEvent::Notify(text))
    }
}

helper! {
    yield_control_helper, |_scope, _args, _rv, state| emit(state, CellEvent::YieldRequested)
}

helper! {
    exit_helper, |scope, _args, _rv, state| {
        // The flag first: every helper checks it, so nothing takes effect even in the
        // instants before V8 acts on the termination request.
        state.borrow_mut().request_exit();
        scope.terminate_execution();
        Ok(())
    }
}

helper! {
    set_timeout_helper, |scope, args, rv, state| {
        let callback = v8::Local::<v8::Function>::try_from(args.get(0))
            .map_err(|_| Fail::from(SET_TIMEOUT_CALLBACK))?;
        let delay = args.get(1);
        let delay_ms = if delay.is_undefined() {
            0.0
        } else {
            delay.number_value(scope).ok_or(Fail::Pending)?
        };
        let delay_ms = if delay_ms.is_finite() && delay_ms > 0.0 {
            delay_ms.min(MAX_TIMER_DELAY_MS)
        } else {
            0.0
        };
        ensure_running(state)?;
        let timer = Timer {
            callback: v8::Global::new(scope, callback),
            args: (2..args.length())
                .map(|index| v8::Global::new(scope, args.get(index)))
                .collect(),
        };
        let id = {
            let mut state = state.borrow_mut();
            let id = state.next_timer_id();
            state.timers.insert(id, timer);
            id
        };
        let delay = Duration::from_secs_f64(delay_ms / 1000.0);
        let armed_at = std::time::Instant::now();
        emit(
            state,
            CellEvent::TimerSet {
                id,
                delay,
                armed_at,
            },
        )?;
        rv.set(v8::Number::new(scope, id as f64).into());
        Ok(())
    }
}

helper! {
    clear_timeout_helper, |scope, args, _rv, state| {
        // `ToNumber(id)`, as upstream converts it (`clearTimeout("1")` clears timer 1); a
        // symbol or a bigint, which `ToNumber` refuses, gets the contract's message.
        let id = args.get(0);
        if id.is_symbol() || id.is_big_int() {
            return Err(CLEAR_TIMEOUT_ID.into());
        }
        let id = id.number_value(scope).ok_or(Fail::Pending)?;
        ensure_running(state)?;
        if id.fract() != 0.0 || id < 1.0 || id > u64::MAX as f64 {
            return Ok(());
        }
        let id = id as u64;
        if state.borrow_mut().timers.remove(&id).is_some() {
            emit(state, CellEvent::TimerCleared { id })?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Nested tool calls
// ---------------------------------------------------------------------------------------

helper! {
    /// `tools.<name>(arg?)`: the function's data is the tool's index.
    tool_helper, |scope, args, rv, state| {
        let index = v8::Local::<v8::Number>::try_from(args.data())
            .map(|number| number.value() as usize)
            .map_err(|_| Fail::from(texts::TOOL_WITHOUT_INDEX))?;
        let Some(tool) = state.borrow().tools.get(index).cloned() else {
            return Err(texts::UNKNOWN_TOOL_INDEX.into());
        };
        let js_name = js_tool_name(&tool.name);
        let resolver = v8::PromiseResolver::new(scope).ok_or(Fail::Pending)?;
        rv.set(resolver.get_promise(scope).into());

        let input = if args.length() == 0 || args.get(0).is_undefined() {
            Ok(None)
        } else {
            tool_input(scope, args.get(0), &js_name, state)?
        };
        let input = input.and_then(|input| {
            let state = state.borrow();
            let limit = state.limits.max_in_flight_tool_calls;
            if state.pending_calls.len() as u64 >= limit {
                Err(texts::too_many_calls_in_flight(&js_name, limit))
            } else {
                Ok(input)
            }
        });
        let input = match input {
            Ok(input) => input,
            Err(message) => {
                let reason = v8_str(scope, &message);
                resolver.reject(scope, reason.into());
                return Ok(());
            }
        };
        ensure_running(state)?;
        let id = {
            let mut state = state.borrow_mut();
            let id = state.next_tool_call_id();
            state
                .pending_calls
                .insert(id.number(), v8::Global::new(scope, resolver));
            id
        };
        code_mode_internal::hop!("cell thread emits the tool call");
        emit(
            state,
            CellEvent::ToolCall(ToolCallRequest {
                id,
                tool_index: index,
                name: tool.name,
                kind: tool.kind,
                input,
            }),
        )
    }
}

/// The JSON text of a tool argument; `Ok(Err(message))` rejects the call's promise.
fn tool_input(
    scope: &mut v8::PinScope<'_, '_>,
    value: v8::Local<'_, v8::Value>,
    js_name: &str,
    state: &StateRef,
) -> Result<Result<Option<String>, String>, Fail> {
    v8::tc_scope!(let tc, scope);
    let json = values::stringify(tc, value);
    if tc.has_terminated() {
        return Err(Fail::Stopped);
    }
    ensure_running(state)?;
    let prefix = texts::argument_not_json(js_name);
    let max_bytes = state.borrow().limits.max_tool_payload_bytes;
    Ok(match json {
        Some(Json::Nothing) => Ok(None),
        Some(Json::Text(text)) => match values::json_text(tc, text, max_bytes) {
            Ok(text) => Ok(Some(text)),
            Err(JsonTextError::TooLarge(bytes)) => {
                Err(texts::argument_too_large(js_name, bytes, max_bytes))
            }
            Err(JsonTextError::TooDeep) => {
                Err(format!("{prefix}: {}", values::depth_error_detail()))
            }
        },
        None => {
            let exception = tc.exception();
            Err(format!("{prefix}: {}", conversion_failure(tc, exception)?))
        }
    })
}
