//! Calls that wait on a person (issue 86): what a delegate says of a call that needs an
//! approval ([`ApprovalNeed`]), what an approver decides ([`Decision`]), and the digest an
//! approval records of the input it lets through ([`input_digest`]). Where approvals are
//! kept and how a waiting call is answered is the host's (`code-mode-host`'s `approvals`)
//! and the store's (`code-mode-state`'s `approvals`).

use serde::{Deserialize, Serialize};

/// A call that must wait for a person's approval before its delegate runs it
/// ([`crate::CodeModeSessionDelegate::approval`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalNeed {
    /// Why, in a few words: the approver reads it beside the call, and the model reads it
    /// in the line that says the call waits. `None`: no reason given.
    pub reason: Option<String>,
}

impl ApprovalNeed {
    /// An approval with no reason given.
    pub fn required() -> Self {
        Self { reason: None }
    }

    /// An approval, for `reason`.
    pub fn because(reason: impl Into<String>) -> Self {
        Self {
            reason: Some(reason.into()),
        }
    }
}

/// What a person decides of a waiting call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// The call goes to its delegate: with this input (JSON text) when the approver
    /// edited it, else with the cell's.
    Approve { input: Option<String> },
    /// The call never reaches its delegate; its promise rejects with a text that carries
    /// `message`, which the model reads.
    Deny { message: String },
}

/// The digest an approval records of the input it approved (SHA-256, hex): what is sent
/// must have it.
pub fn input_digest(input: Option<&str>) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    match input {
        // The tag keeps "no input" apart from any text.
        None => hasher.update([0_u8]),
        Some(text) => {
            hasher.update([1_u8]);
            hasher.update(text.as_bytes());
        }
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_tells_inputs_apart_and_no_input_from_an_empty_one() {
        let digest = input_digest(Some("{\"to\":\"a\"}"));
        assert_eq!(digest.len(), 64);
        assert_eq!(digest, input_digest(Some("{\"to\":\"a\"}")));
        assert_ne!(digest, input_digest(Some("{\"to\":\"b\"}")));
        assert_ne!(input_digest(None), input_digest(Some("")));
    }
}
