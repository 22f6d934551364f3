//! The credentials of `code-mode mcp --http` and the [`Principal`] each names: named bearer
//! tokens from `--auth-tokens-file`, the one token of `--auth-token-file` or
//! `CODE_MODE_MCP_TOKEN` as the principal `default`, and OAuth 2.1 access tokens checked by
//! [`super::jwt`].
//!
//! Static tokens are never kept, only their SHA-256 digests; a presented token is hashed
//! once and compared with every configured digest in constant time (`subtle`), the index of
//! the match chosen without a branch, so timing reveals neither how much of a wrong token
//! was right nor which configured token a right one is.

use super::jwt::JwtVerifier;
use super::principal::{Principal, Refusal};
use sha2::{Digest, Sha256};
use std::path::Path;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// The environment variable that holds the token when no `--auth-token-file` is given.
pub const TOKEN_ENV: &str = "CODE_MODE_MCP_TOKEN";

/// The shortest token accepted, in characters: 16 random characters are about 95 bits
/// from base64 and 64 from hex, beyond guessing over a network.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The name of the principal of `--auth-token-file` / `CODE_MODE_MCP_TOKEN`.
pub const DEFAULT_PRINCIPAL: &str = "default";

/// Why the configured credentials could not be loaded; never shows a token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {what} {path}: {error}")]
    Read {
        what: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("{TOKEN_ENV} is not valid UTF-8")]
    EnvNotUnicode,
    #[error("the bearer token in {origin} is empty")]
    Empty { origin: String },
    #[error(
        "the bearer token in {origin} holds {shown}; a token is printable ASCII without spaces \
         (make one with `openssl rand -hex 32`)"
    )]
    Unprintable { origin: String, shown: String },
    #[error(
        "the bearer token in {origin} is {chars} characters long; use at least {MIN_TOKEN_CHARS} \
         (make one with `openssl rand -hex 32`)"
    )]
    Short { origin: String, chars: usize },
    #[error(
        "{path} line {line}: expected `NAME TOKEN` (a name of letters, digits, `.`, `_`, `-` \
         or `@`, a space, then the token)"
    )]
    Line { path: String, line: usize },
    #[error("{path} line {line}: the principal {name} is named twice")]
    DuplicateName {
        path: String,
        line: usize,
        name: String,
    },
    #[error("{path} line {line}: the token of {name} is the token of another principal")]
    DuplicateToken {
        path: String,
        line: usize,
        name: String,
    },
    #[error("{path} names no principal")]
    NoPrincipal { path: String },
}

/// One configured static token; only its digest is kept.
struct NamedToken {
    name: String,
    digest: [u8; 32],
}

/// The static bearer tokens, each naming a principal.
#[derive(Default)]
pub struct NamedTokens {
    tokens: Vec<NamedToken>,
}

impl std::fmt::Debug for NamedTokens {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .tokens
            .iter()
            .map(|token| token.name.as_str())
            .collect();
        write!(formatter, "NamedTokens({names:?})")
    }
}

/// A token's text checked (surrounding white space removed) and hashed.
fn digest_of(text: &str, source: &str) -> Result<[u8; 32], AuthError> {
    let token = text.trim();
    if token.is_empty() {
        return Err(AuthError::Empty {
            origin: source.to_owned(),
        });
    }
    if let Some(bad) = token.chars().find(|c| !c.is_ascii_graphic()) {
        let shown = if bad.is_whitespace() {
            "white space".to_owned()
        } else {
            format!("{bad:?}")
        };
        return Err(AuthError::Unprintable {
            origin: source.to_owned(),
            shown,
        });
    }
    let chars = token.chars().count();
    if chars < MIN_TOKEN_CHARS {
        return Err(AuthError::Short {
            origin: source.to_owned(),
            chars,
        });
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

/// Whether `name` may name a principal in the tokens file.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

impl NamedTokens {
    /// The one token of `--auth-token-file` (else `CODE_MODE_MCP_TOKEN`) as the principal
    /// `default`, and the named tokens of `--auth-tokens-file`; empty when none is given.
    pub fn configured(single: Option<&Path>, named: Option<&Path>) -> Result<Self, AuthError> {
        let mut tokens = Self::default();
        let single = match single {
            Some(file) => Some((
                read(file, "the bearer token file")?,
                file.display().to_string(),
            )),
            None => match std::env::var(TOKEN_ENV) {
                Ok(text) => Some((text, TOKEN_ENV.to_owned())),
                Err(std::env::VarError::NotPresent) => None,
                Err(std::env::VarError::NotUnicode(_)) => return Err(AuthError::EnvNotUnicode),
            },
        };
        if let Some((text, source)) = single {
            tokens.tokens.push(NamedToken {
                name: DEFAULT_PRINCIPAL.to_owned(),
                digest: digest_of(&text, &source)?,
            });
        }
        if let Some(file) = named {
            tokens.parse_file(&read(file, "the tokens file")?, &file.display().to_string())?;
        }
        Ok(tokens)
    }

    /// Adds the principals of a tokens file: `NAME TOKEN` a line; blank lines and lines
    /// starting with `#` are skipped.
    fn parse_file(&mut self, text: &str, path: &str) -> Result<(), AuthError> {
        let before = self.tokens.len();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, token)) = line.split_once(char::is_whitespace) else {
                return Err(AuthError::Line {
                    path: path.to_owned(),
                    line: number,
                });
            };
            if !valid_name(name) {
                return Err(AuthError::Line {
                    path: path.to_owned(),
                    line: number,
                });
            }
            let digest = digest_of(token, &format!("{path} line {number}"))?;
            let clash = |error: fn(String, usize, String) -> AuthError| {
                Err(error(path.to_owned(), number, name.to_owned()))
            };
            if self.tokens.iter().any(|known| known.name == name) {
                return clash(|path, line, name| AuthError::DuplicateName { path, line, name });
            }
            if self.tokens.iter().any(|known| known.digest == digest) {
                return clash(|path, line, name| AuthError::DuplicateToken { path, line, name });
            }
            self.tokens.push(NamedToken {
                name: name.to_owned(),
                digest,
            });
        }
        if self.tokens.len() == before {
            return Err(AuthError::NoPrincipal {
                path: path.to_owned(),
            });
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The principal whose token `presented` is. Every configured digest is compared, in
    /// constant time, whatever matches.
    fn find(&self, presented: &[u8]) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (position, token) in self.tokens.iter().enumerate() {
            let matches = digest.ct_eq(&token.digest);
            let position = u32::try_from(position).unwrap_or(u32::MAX);
            index.conditional_assign(&position, matches);
            found |= matches;
        }
        let found: bool = found.into();
        found.then(|| Principal::Token {
            name: self.tokens[index as usize].name.clone(),
        })
    }
}

fn read(file: &Path, what: &'static str) -> Result<String, AuthError> {
    std::fs::read_to_string(file).map_err(|error| AuthError::Read {
        what,
        path: file.display().to_string(),
        error,
    })
}

/// Everything a request's credentials are checked against.
pub struct Credentials {
    pub tokens: NamedTokens,
    pub jwt: Option<JwtVerifier>,
}

impl Credentials {
    /// Whether any credential is required at all.
    pub fn required(&self) -> bool {
        !self.tokens.is_empty() || self.jwt.is_some()
    }

    /// The principal of an `Authorization` header value (`Bearer <token>`, the scheme in any
    /// case, as RFC 6750 and the MCP authorization specification have clients send it): a
    /// static token's, else, when JWTs are accepted, the access token's subject.
    pub async fn check(&self, authorization: Option<&[u8]>) -> Result<Principal, Refusal> {
        let presented = authorization.and_then(bearer).ok_or(Refusal::Missing)?;
        if let Some(principal) = self.tokens.find(presented) {
            return Ok(principal);
        }
        match (&self.jwt, std::str::from_utf8(presented)) {
            (Some(jwt), Ok(token)) => jwt.verify(token).await,
            _ => Err(Refusal::Invalid("the bearer token is not valid")),
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
    const OTHER: &str = "fedcba98765432100123";

    fn tokens(text: &str) -> Result<NamedTokens, AuthError> {
        let mut tokens = NamedTokens::default();
        tokens.parse_file(text, "FILE").map(|()| tokens)
    }

    fn credentials(text: &str) -> Credentials {
        Credentials {
            tokens: tokens(text).unwrap(),
            jwt: None,
        }
    }

    fn check(credentials: &Credentials, header: Option<&str>) -> Result<Principal, Refusal> {
        futures_util::FutureExt::now_or_never(credentials.check(header.map(str::as_bytes)))
            .expect("no JWT: answered at once")
    }

    fn named(name: &str) -> Result<Principal, Refusal> {
        Ok(Principal::Token {
            name: name.to_owned(),
        })
    }

    #[test]
    fn each_token_names_its_principal_in_any_scheme_case() {
        let credentials = credentials(&format!("# who\n\nalice {TOKEN}\nbob\t{OTHER}  \n"));
        for header in [format!("Bearer {TOKEN}"), format!("bearer  {TOKEN} ")] {
            assert_eq!(check(&credentials, Some(&header)), named("alice"));
        }
        assert_eq!(
            check(&credentials, Some(&format!("Bearer {OTHER}"))),
            named("bob")
        );
    }

    #[test]
    fn wrong_missing_and_other_schemes_are_refused() {
        let credentials = credentials(&format!("alice {TOKEN}\nbob {OTHER}\n"));
        for missing in [
            None,
            Some("Basic dXNlcjpwYXNz"),
            Some("Bearer"),
            Some("Bearer "),
        ] {
            assert_eq!(
                check(&credentials, missing),
                Err(Refusal::Missing),
                "{missing:?}"
            );
        }
        let prefix = &TOKEN[..TOKEN.len() - 1];
        for wrong in [prefix, "0123456789abcdef0124", &format!("{TOKEN}0")] {
            let header = format!("Bearer {wrong}");
            assert!(
                matches!(check(&credentials, Some(&header)), Err(Refusal::Invalid(_))),
                "{wrong}"
            );
        }
    }

    #[test]
    fn a_tokens_file_is_refused_with_the_line_at_fault() {
        let error = |text: &str| tokens(text).unwrap_err().to_string();
        let no_token = error("alice\n");
        assert!(
            no_token.contains("FILE line 1") && no_token.contains("NAME TOKEN"),
            "{no_token}"
        );
        let bad_name = error(&format!("al/ice {TOKEN}\n"));
        assert!(bad_name.contains("line 1"), "{bad_name}");
        let twice = error(&format!("alice {TOKEN}\n\nalice {OTHER}\n"));
        assert!(
            twice.contains("line 3") && twice.contains("named twice"),
            "{twice}"
        );
        let shared = error(&format!("alice {TOKEN}\nbob {TOKEN}\n"));
        assert!(
            shared.contains("line 2") && shared.contains("another principal"),
            "{shared}"
        );
        let short = error("alice short\n");
        assert!(
            short.contains("FILE line 1") && short.contains("5 characters"),
            "{short}"
        );
        assert!(!short.contains("short\n"), "{short}");
        let spaced = error(&format!("alice {TOKEN} x\n"));
        assert!(spaced.contains("white space"), "{spaced}");
        let empty = error("# nobody\n");
        assert!(empty.contains("names no principal"), "{empty}");
        assert!(!format!("{:?}", tokens(&format!("alice {TOKEN}")).unwrap()).contains(TOKEN));
    }

    #[test]
    fn the_one_token_is_the_default_principal() {
        let mut credentials = Credentials {
            tokens: NamedTokens::default(),
            jwt: None,
        };
        assert!(!credentials.required());
        credentials.tokens.tokens.push(NamedToken {
            name: DEFAULT_PRINCIPAL.to_owned(),
            digest: digest_of(&format!("{TOKEN}\n"), "test").unwrap(),
        });
        assert!(credentials.required());
        assert_eq!(
            check(&credentials, Some(&format!("Bearer {TOKEN}"))),
            named(DEFAULT_PRINCIPAL)
        );
        let weak = digest_of("short", "FILE").unwrap_err().to_string();
        assert!(
            weak.contains("at least 16") && weak.contains("FILE"),
            "{weak}"
        );
    }
}
