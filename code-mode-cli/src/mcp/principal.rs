//! Who a request of `code-mode mcp --http` comes from: the [`Principal`] its credentials
//! name ([`super::auth`]), why credentials are refused ([`Refusal`]), and the
//! request-scoped [`REQUESTER`] through which the session manager and the state store
//! learn who opens a session. An MCP session belongs to the principal that opened it.

use serde::{Deserialize, Serialize};

/// Who a request comes from; an MCP session belongs to the principal that opened it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Principal {
    /// No credentials are configured (loopback only): every request is the same user.
    Anonymous,
    /// A static bearer token, by its name in the tokens file (`default` for the one token).
    Token { name: String },
    /// An OAuth access token: its `sub`, qualified by its issuer.
    Jwt { issuer: String, subject: String },
}

impl std::fmt::Display for Principal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => formatter.write_str("anonymous"),
            Self::Token { name } => write!(formatter, "token {name}"),
            Self::Jwt { issuer, subject } => write!(formatter, "{subject} of {issuer}"),
        }
    }
}

tokio::task_local! {
    /// The principal of the request being served. The HTTP front runs rmcp's handling of
    /// each request inside it: rmcp creates, restores and stores a session inline in that
    /// request, and hands its session manager and store nothing else that says who asked.
    pub static REQUESTER: Principal;
}

/// The principal of the request being served, if any (see [`REQUESTER`]).
pub fn requester() -> Option<Principal> {
    REQUESTER.try_with(Principal::clone).ok()
}

/// Why a request's credentials were refused; the texts are short, for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `Authorization` header, or not a bearer one.
    #[error("send a bearer token as `Authorization: Bearer <token>`")]
    Missing,
    /// A bearer token that is not valid here; the text says why, without detail an
    /// attacker could use.
    #[error("{0}")]
    Invalid(&'static str),
}
