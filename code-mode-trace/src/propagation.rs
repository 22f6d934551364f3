//! W3C trace context in and out of a process: a [`Parent`] is read from a `traceparent`
//! value (gRPC metadata, a JSON-lines field, MCP `_meta`) and written onto what leaves
//! (Codex's `ToolInvocation.traceparent`, our wire to the runtime).

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;

/// The header (and field) name of W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// A span context to parent spans on, or to send on.
#[derive(Debug, Clone, Default)]
pub struct Parent(opentelemetry::Context);

impl Parent {
    /// The context a `traceparent` value names, or `None` when the value is malformed (a
    /// malformed value is ignored, never an error).
    pub fn from_traceparent(value: &str) -> Option<Self> {
        let value = value.trim();
        if !well_formed(value) {
            return None;
        }
        let carrier = HashMap::from([(TRACEPARENT.to_owned(), known_flags_only(value))]);
        let context = TraceContextPropagator::new().extract(&carrier);
        context
            .span()
            .span_context()
            .is_valid()
            .then_some(Self(context))
    }

    /// The context of `span` (empty when tracing is off or the span is disabled).
    pub fn of(span: &tracing::Span) -> Self {
        Self(crate::context_of(span))
    }

    /// The `traceparent` value of this context, if it names a span.
    pub fn traceparent(&self) -> Option<String> {
        if !self.0.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&self.0, &mut carrier);
        carrier.remove(TRACEPARENT)
    }

    /// Makes this context the parent of `span` (a span that is not exported ignores it).
    pub fn adopt(&self, span: &tracing::Span) {
        crate::adopt(span, &self.0);
    }
}

/// The W3C shape, `version-trace_id-parent_id-flags` in lowercase hex of 2, 32, 16 and 2
/// digits (version 00 has exactly four parts; later versions may add more). The SDK's
/// parser alone takes ids of the wrong length.
fn well_formed(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |part: &str, len: usize| {
        part.len() == len
            && part
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    };
    parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && (parts[0] != "00" || parts.len() == 4)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

/// The value with only the flag this process understands (sampled) kept: trace context
/// level 2 adds a `random` flag (0x02) that recent SDKs set (OpenTelemetry Python 1.45
/// does), and the parser refuses a version-00 value with any flag it does not know,
/// where the W3C says a receiver ignores them.
fn known_flags_only(value: &str) -> String {
    let mut parts: Vec<&str> = value.split('-').collect();
    let flags = u8::from_str_radix(parts[3], 16).unwrap_or(0) & 0x01;
    let kept = format!("{flags:02x}");
    parts[3] = &kept;
    parts.join("-")
}

/// Parents `span` on the `traceparent` value, if there is one and it is well formed.
pub fn adopt_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(Parent::from_traceparent) {
        parent.adopt(span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_values_round_trip_and_malformed_ones_are_ignored() {
        let value = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let parent = Parent::from_traceparent(value).expect("a valid traceparent");
        assert_eq!(parent.traceparent().as_deref(), Some(value));
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(Parent::from_traceparent(bad).is_none(), "{bad:?} was taken");
        }
        assert_eq!(Parent::default().traceparent(), None);
    }

    #[test]
    fn flags_this_process_does_not_know_are_ignored_not_refused() {
        // Trace context level 2's random flag, as OpenTelemetry Python 1.45 sends it.
        let value = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03";
        let parent = Parent::from_traceparent(value).expect("a traceparent with the random flag");
        assert_eq!(
            parent.traceparent().as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02";
        let parent = Parent::from_traceparent(unsampled).expect("random, not sampled");
        assert!(parent.traceparent().unwrap().ends_with("-00"));
    }
}
