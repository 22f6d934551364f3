//! The conformance suite, written once against the `CodeModeSession` trait and run for
//! every provider; added by the sessions issue. Empty until then.
