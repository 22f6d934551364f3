//! The tool table of a tool set: which tools a cell binds eagerly and which it finds by
//! name (deferred), worked out once per set and shared by every cell of it. Its own
//! module, below both the helpers that build `tools` and the cell state that keeps a
//! set's table for the interceptor.

use code_mode_internal::sync::lock;
use code_mode_protocol::{ToolDefinition, js_tool_name};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

/// One tool set as a cell binds it, worked out once per set: the tools bound eagerly
/// (index and JavaScript name) and the deferred tools by JavaScript name. A name an
/// earlier tool of the set already has is left out (the first tool with a name is the
/// callable one).
#[derive(Debug, Default)]
pub(crate) struct ToolTable {
    pub(crate) eager: Vec<(usize, String)>,
    pub(crate) deferred: HashMap<String, usize>,
    /// The length of the longest deferred name (names are ASCII: bytes and UTF-16 units
    /// alike): a longer property key names none, and is not copied out of V8.
    pub(crate) longest_deferred: usize,
}

/// How many tool sets' tables are kept ([`tool_table`]): a runtime serves a few.
const KEPT_TABLES: usize = 8;

/// The table of `tools`. Built once per tool set: sessions hand every cell of a set the
/// same `Arc` (for deferred sets, see `search::SearchCache`), so a set is found by its
/// address while it lives; a set of a few tools costs little to work out again.
pub(crate) fn tool_table(tools: &Arc<[ToolDefinition]>) -> Arc<ToolTable> {
    type Kept = Vec<(Weak<[ToolDefinition]>, Arc<ToolTable>)>;
    static KEPT: Mutex<Kept> = Mutex::new(Vec::new());
    {
        let mut kept = lock(&KEPT);
        kept.retain(|(set, _)| set.strong_count() > 0);
        if let Some((_, table)) = kept
            .iter()
            .find(|(set, _)| std::ptr::addr_eq(set.as_ptr(), Arc::as_ptr(tools)))
        {
            return Arc::clone(table);
        }
    }
    let mut seen = HashSet::new();
    let mut table = ToolTable::default();
    for (index, tool) in tools.iter().enumerate() {
        let js_name = js_tool_name(&tool.name);
        if !seen.insert(js_name.clone()) {
            tracing::warn!(
                tool = %tool.name,
                js_name = %js_name,
                "two tools share one JS name; only the first is callable"
            );
        } else if tool.deferred {
            table.longest_deferred = table.longest_deferred.max(js_name.len());
            table.deferred.insert(js_name, index);
        } else {
            table.eager.push((index, js_name));
        }
    }
    let table = Arc::new(table);
    let mut kept = lock(&KEPT);
    if kept.len() >= KEPT_TABLES {
        kept.remove(0);
    }
    kept.push((Arc::downgrade(tools), Arc::clone(&table)));
    table
}
