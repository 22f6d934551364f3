//! `tools` and `ALL_TOOLS` (contract §2, §8.3).
//!
//! Tools that are not deferred are own properties of the frozen `tools` object, built with
//! all their properties at once. Deferred tools (there may be thousands) cost nothing per
//! cell until a cell uses one: `tools`' prototype is an object whose named-property
//! interceptor finds a deferred tool by its JavaScript name (the set's `ToolTable`, worked
//! out once per tool set and shared by every cell that uses it) and creates its function on first
//! use (the same function afterwards), and `ALL_TOOLS` is a lazy data property, built
//! when first read. A cell cannot tell either from eager ones: `tools.<name>` and
//! `name in tools` find the tool, `ALL_TOOLS` lists every tool with its description.

use super::{define_with, freeze, global_attributes, new_tool_function, own_state, v8_str};
use crate::runtime::state::StateRef;
use crate::runtime::tool_table::{ToolTable, tool_table};
use code_mode_protocol::{ToolDefinition, js_tool_name};
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

/// The `tools` object and, unless it is lazy, the `ALL_TOOLS` array of a cell, built
/// (frozen) in the current context and not yet reachable from JS: see [`define_tools`].
pub(crate) struct BuiltTools {
    pub(crate) tools: v8::Global<v8::Object>,
    /// `None` with deferred tools: `ALL_TOOLS` is then built when first read.
    pub(crate) all_tools: Option<v8::Global<v8::Array>>,
    pub(crate) deferred: Option<Arc<ToolTable>>,
}

/// The keys and prototype every `ALL_TOOLS` entry is built with.
struct EntryParts<'s> {
    prototype: v8::Local<'s, v8::Value>,
    name: v8::Local<'s, v8::Name>,
    description: v8::Local<'s, v8::Name>,
}

impl<'s> EntryParts<'s> {
    fn new(scope: &v8::PinScope<'s, '_>) -> Self {
        Self {
            prototype: object_prototype(scope),
            name: v8_str(scope, "name").into(),
            description: v8_str(scope, "description").into(),
        }
    }

    /// A frozen `{ name, description }`.
    fn entry(
        &self,
        scope: &v8::PinScope<'s, '_>,
        name: v8::Local<'s, v8::Value>,
        description: v8::Local<'s, v8::String>,
    ) -> v8::Local<'s, v8::Value> {
        let entry = v8::Object::with_prototype_and_properties(
            scope,
            self.prototype,
            &[self.name, self.description],
            &[name, description.into()],
        );
        freeze(scope, entry);
        entry.into()
    }
}

fn object_prototype<'s>(scope: &v8::PinScope<'s, '_>) -> v8::Local<'s, v8::Value> {
    v8::Object::new(scope)
        .get_prototype(scope)
        .unwrap_or_else(|| v8::null(scope).into())
}

/// Builds `tools` and `ALL_TOOLS` for `tools`. `prepared` holds tool functions created
/// ahead for indices 0, 1, ...; the others are created here.
pub(crate) fn build_tools(
    scope: &mut v8::PinScope<'_, '_>,
    tools: &Arc<[ToolDefinition]>,
    prepared: &[v8::Global<v8::Function>],
) -> BuiltTools {
    // Objects are built with all their properties at once, then frozen: the same result
    // as defining read-only properties one by one, at a fraction of the cost (this runs
    // on every cell's critical path, for every eager tool).
    let table = tool_table(tools);
    let deferred = (!table.deferred.is_empty()).then(|| Arc::clone(&table));
    let (eager_names, descriptions) = eager_strings(scope, &table, tools);
    let parts = EntryParts::new(scope);
    let mut names: Vec<v8::Local<v8::Name>> = Vec::with_capacity(table.eager.len());
    let mut functions: Vec<v8::Local<v8::Value>> = Vec::with_capacity(table.eager.len());
    let mut entries: Vec<v8::Local<v8::Value>> = Vec::new();
    for ((index, _), (name, description)) in table
        .eager
        .iter()
        .zip(eager_names.into_iter().zip(descriptions))
    {
        let function = match prepared.get(*index) {
            Some(function) => v8::Local::new(scope, function),
            None => new_tool_function(scope, *index),
        };
        function.set_name(name);
        names.push(name.into());
        functions.push(function.into());
        if deferred.is_none() {
            entries.push(parts.entry(scope, name.into(), description));
        }
    }
    let prototype = match &deferred {
        Some(_) => deferred_prototype(scope).into(),
        None => parts.prototype,
    };
    let tools_object =
        v8::Object::with_prototype_and_properties(scope, prototype, &names, &functions);
    freeze(scope, tools_object);
    let all_tools = deferred.is_none().then(|| {
        let all_tools = v8::Array::new_with_elements(scope, &entries);
        freeze(scope, all_tools.into());
        v8::Global::new(scope, all_tools)
    });
    BuiltTools {
        tools: v8::Global::new(scope, tools_object),
        all_tools,
        deferred,
    }
}

/// The JavaScript names (internalized: they are property keys) and the descriptions of
/// the eager tools of the latest tool set whose `tools` an isolate built, kept in the
/// isolate (a slot) for its next contexts: a session's cells usually have the same set,
/// and each fresh context would make the same strings again.
pub(super) struct EagerStrings {
    table: Arc<ToolTable>,
    names: Vec<v8::Global<v8::String>>,
    descriptions: Vec<v8::Global<v8::String>>,
}

/// The isolate slot of [`EagerStrings`].
pub(super) type EagerStringsSlot = Rc<RefCell<Option<EagerStrings>>>;

/// The names and descriptions of `table`'s eager tools, in its order: the isolate's kept
/// strings when they are of this table, else made now and kept.
fn eager_strings<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    table: &Arc<ToolTable>,
    tools: &[ToolDefinition],
) -> (
    Vec<v8::Local<'s, v8::String>>,
    Vec<v8::Local<'s, v8::String>>,
) {
    let slot = super::isolate_cache::<EagerStringsSlot>(scope);
    let mut kept = slot.borrow_mut();
    if let Some(strings) = kept.as_ref().filter(|kept| Arc::ptr_eq(&kept.table, table)) {
        let local = |strings: &[v8::Global<v8::String>]| {
            strings
                .iter()
                .map(|string| v8::Local::new(scope, string))
                .collect::<Vec<_>>()
        };
        return (local(&strings.names), local(&strings.descriptions));
    }
    let mut names = Vec::with_capacity(table.eager.len());
    let mut descriptions = Vec::with_capacity(table.eager.len());
    for (index, js_name) in &table.eager {
        let name =
            v8::String::new_from_utf8(scope, js_name.as_bytes(), v8::NewStringType::Internalized)
                .unwrap_or_else(|| v8::String::empty(scope));
        names.push(name);
        descriptions.push(v8_str(scope, &tools[*index].description));
    }
    let global = |strings: &[v8::Local<'s, v8::String>]| {
        strings
            .iter()
            .map(|string| v8::Global::new(scope, *string))
            .collect()
    };
    *kept = Some(EagerStrings {
        table: Arc::clone(table),
        names: global(&names),
        descriptions: global(&descriptions),
    });
    (names, descriptions)
}

/// Makes built tools the cell's `tools` and `ALL_TOOLS`: read-only globals on the
/// contract's surface, plain (writable) ones in place of the placeholders on Codex's.
pub(crate) fn define_tools(
    scope: &mut v8::PinScope<'_, '_>,
    built: BuiltTools,
    surface: code_mode_protocol::Surface,
) {
    let context = scope.get_current_context();
    let global = context.global(scope);
    let tools = v8::Local::new(scope, built.tools);
    define_with(scope, global, "tools", tools.into(), surface);
    if let Some(state) = scope.get_slot::<StateRef>() {
        state.borrow_mut().deferred = built.deferred;
    }
    match built.all_tools {
        Some(all_tools) => {
            let all_tools = v8::Local::new(scope, all_tools);
            define_with(scope, global, "ALL_TOOLS", all_tools.into(), surface);
        }
        None => {
            let name = v8_str(scope, "ALL_TOOLS").into();
            let undefined = v8::undefined(scope).into();
            global.set_lazy_data_property_with_data(
                scope,
                name,
                all_tools_getter,
                undefined,
                global_attributes(surface),
                v8::SideEffectType::HasNoSideEffect,
                v8::SideEffectType::HasSideEffect,
            );
        }
    }
}

/// `ALL_TOOLS`, built when first read: every tool of the cell, deferred ones included.
fn all_tools_getter<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    _name: v8::Local<'s, v8::Name>,
    _args: v8::PropertyCallbackArguments<'s>,
    mut rv: v8::ReturnValue<v8::Value>,
) {
    let Some(state) = own_state(scope) else {
        return;
    };
    let tools = Arc::clone(&state.borrow().tools);
    let parts = EntryParts::new(scope);
    let mut bound = HashSet::new();
    let mut entries = Vec::with_capacity(tools.len());
    for tool in tools.iter() {
        let js_name = js_tool_name(&tool.name);
        if bound.insert(js_name.clone()) {
            let name = v8_str(scope, &js_name).into();
            let description = v8_str(scope, &tool.description);
            entries.push(parts.entry(scope, name, description));
        }
    }
    let all_tools = v8::Array::new_with_elements(scope, &entries);
    freeze(scope, all_tools.into());
    rv.set(all_tools.into());
}

/// The prototype of a `tools` object with deferred tools: finds them by name.
fn deferred_prototype<'s>(scope: &mut v8::PinScope<'s, '_>) -> v8::Local<'s, v8::Object> {
    let template = v8::ObjectTemplate::new(scope);
    template.set_named_property_handler(
        v8::NamedPropertyHandlerConfiguration::new()
            .getter(deferred_getter)
            .query(deferred_query)
            .flags(v8::PropertyHandlerFlags::ONLY_INTERCEPT_STRINGS),
    );
    let prototype = template
        .new_instance(scope)
        .expect("an object from a fixed template, before any user code");
    let object_prototype = object_prototype(scope);
    prototype.set_prototype(scope, object_prototype);
    prototype
}

/// The index of the deferred tool `key` names, for the running cell.
fn deferred_index(
    scope: &v8::PinScope<'_, '_>,
    key: v8::Local<'_, v8::Name>,
) -> Option<(StateRef, usize)> {
    // A key longer than every deferred name is not copied out of V8 (a cell's key may be
    // as long as its heap); symbols never reach here (the interceptor takes strings).
    let key = v8::Local::<v8::String>::try_from(key).ok()?;
    let state = own_state(scope)?;
    let longest = state.borrow().deferred.as_ref()?.longest_deferred;
    if key.length() > longest {
        return None;
    }
    let key = key.to_rust_string_lossy(scope);
    let index = *state.borrow().deferred.as_ref()?.deferred.get(&key)?;
    Some((state, index))
}

/// `tools.<deferred name>`: the tool's function, created on first use.
fn deferred_getter<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    key: v8::Local<'s, v8::Name>,
    _args: v8::PropertyCallbackArguments<'s>,
    mut rv: v8::ReturnValue<v8::Value>,
) -> v8::Intercepted {
    let Some((state, index)) = deferred_index(scope, key) else {
        return v8::Intercepted::kNo;
    };
    let existing = state.borrow().deferred_functions.get(&index).cloned();
    let function = match existing {
        Some(function) => v8::Local::new(scope, function),
        None => {
            let function = new_tool_function(scope, index);
            if let Ok(name) = v8::Local::<v8::String>::try_from(key) {
                function.set_name(name);
            }
            let global = v8::Global::new(scope, function);
            state.borrow_mut().deferred_functions.insert(index, global);
            function
        }
    };
    rv.set(function.into());
    v8::Intercepted::kYes
}

/// `name in tools` for a deferred tool: a read-only, non-deletable property.
fn deferred_query<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    key: v8::Local<'s, v8::Name>,
    _args: v8::PropertyCallbackArguments<'s>,
    mut rv: v8::ReturnValue<v8::Integer>,
) -> v8::Intercepted {
    if deferred_index(scope, key).is_none() {
        return v8::Intercepted::kNo;
    }
    let attributes = v8::PropertyAttribute::READ_ONLY | v8::PropertyAttribute::DONT_DELETE;
    rv.set_int32(attributes.as_u32() as i32);
    v8::Intercepted::kYes
}
