//! The Codex front's tests: conformance of the gRPC and JSON fronts, the differential
//! corpus against codex's own host, and the real codex CLI end to end.
