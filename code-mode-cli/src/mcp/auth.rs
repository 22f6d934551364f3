//! The bearer token of `code-mode mcp --http`: where it comes from (`--auth-token-file`,
//! else `CODE_MODE_MCP_TOKEN`), what makes it acceptable, and checking a request's
//! `Authorization: Bearer <token>` header against it without revealing, through timing,
//! how much of a wrong token was right or how long the real one is (both sides are hashed
//! with SHA-256 and the digests compared in constant time by `subtle`).

use sha2::{Digest, Sha256};
use std::path::Path;
use subtle::ConstantTimeEq;

/// The environment variable that holds the token when no `--auth-token-file` is given.
pub const TOKEN_ENV: &str = "CODE_MODE_MCP_TOKEN";

/// The shortest token accepted, in characters: 16 random characters are about 95 bits
/// from base64 and 64 from hex, beyond guessing over a network.
pub const MIN_TOKEN_CHARS: usize = 16;

/// A configured bearer token; only its digest is kept.
pub struct BearerToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("BearerToken(..)")
    }
}

/// What a request's credentials came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// No `Authorization` header, or not a bearer one.
    Missing,
    /// A bearer token that is not the configured one.
    Wrong,
}

impl BearerToken {
    /// A token from its text (surrounding white space removed); the error says what is
    /// wrong with it, never the token itself.
    pub fn new(text: &str, source: &str) -> Result<Self, String> {
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("the bearer token in {source} is empty"));
        }
        if let Some(bad) = token.chars().find(|c| !c.is_ascii_graphic()) {
            let shown = if bad.is_whitespace() {
                "white space".to_owned()
            } else {
                format!("{:?}", bad)
            };
            return Err(format!(
                "the bearer token in {source} holds {shown}; a token is printable ASCII without spaces \
                 (make one with `openssl rand -hex 32`)"
            ));
        }
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(format!(
                "the bearer token in {source} is {} characters long; use at least {MIN_TOKEN_CHARS} \
                 (make one with `openssl rand -hex 32`)",
                token.chars().count()
            ));
        }
        Ok(Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// The token from `file` when given, else from `CODE_MODE_MCP_TOKEN` when set; `None`
    /// when neither is.
    pub fn configured(file: Option<&Path>) -> Result<Option<Self>, String> {
        if let Some(file) = file {
            let text = std::fs::read_to_string(file).map_err(|error| {
                format!(
                    "cannot read the bearer token file {}: {error}",
                    file.display()
                )
            })?;
            return Self::new(&text, &file.display().to_string()).map(Some);
        }
        match std::env::var(TOKEN_ENV) {
            Ok(text) => Self::new(&text, TOKEN_ENV).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("{TOKEN_ENV} is not valid UTF-8"))
            }
        }
    }

    /// Checks an `Authorization` header value (`Bearer <token>`, the scheme in any case,
    /// as RFC 6750 and the MCP authorization specification have clients send it).
    pub fn check(&self, authorization: Option<&[u8]>) -> Verdict {
        let Some(value) = authorization else {
            return Verdict::Missing;
        };
        let Some(presented) = bearer(value) else {
            return Verdict::Missing;
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        if bool::from(digest.ct_eq(&self.digest)) {
            Verdict::Accepted
        } else {
            Verdict::Wrong
        }
    }
}

/// The credentials of a `Bearer` authorization value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|byte| *byte == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn the_right_token_in_any_scheme_case_is_accepted() {
        let token = BearerToken::new(&format!("{TOKEN}\n"), "test").unwrap();
        for header in [format!("Bearer {TOKEN}"), format!("bearer  {TOKEN} ")] {
            assert_eq!(token.check(Some(header.as_bytes())), Verdict::Accepted);
        }
    }

    #[test]
    fn wrong_missing_and_other_schemes_are_refused() {
        let token = BearerToken::new(TOKEN, "test").unwrap();
        assert_eq!(token.check(None), Verdict::Missing);
        assert_eq!(token.check(Some(b"Basic dXNlcjpwYXNz")), Verdict::Missing);
        assert_eq!(token.check(Some(b"Bearer")), Verdict::Missing);
        assert_eq!(token.check(Some(b"Bearer ")), Verdict::Missing);
        let prefix = &TOKEN[..TOKEN.len() - 1];
        for wrong in [prefix, "0123456789abcdef0124", &format!("{TOKEN}0")] {
            let header = format!("Bearer {wrong}");
            assert_eq!(
                token.check(Some(header.as_bytes())),
                Verdict::Wrong,
                "{wrong}"
            );
        }
    }

    #[test]
    fn weak_or_malformed_tokens_are_refused_with_the_reason() {
        let short = BearerToken::new("short", "FILE").unwrap_err();
        assert!(
            short.contains("5 characters long") && short.contains("FILE"),
            "{short}"
        );
        let spaced = BearerToken::new("0123456789 abcdef0123", "FILE").unwrap_err();
        assert!(spaced.contains("white space"), "{spaced}");
        let empty = BearerToken::new(" \n", "FILE").unwrap_err();
        assert!(empty.contains("empty"), "{empty}");
        assert!(!format!("{:?}", BearerToken::new(TOKEN, "x").unwrap()).contains(TOKEN));
    }
}
