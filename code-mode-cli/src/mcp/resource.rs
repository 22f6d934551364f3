//! `code-mode mcp --http` as an OAuth 2.1 resource server, as the MCP authorization
//! specification has a remote MCP server be: it owns the Protected Resource Metadata of
//! RFC 9728 (the document, the paths it is served at) and the `WWW-Authenticate` challenge
//! of RFC 6750 that a `401` carries, which points clients to that document.

use super::jwt::check_url;
use super::principal::Refusal;

/// The well-known path of RFC 9728 §3.
const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// This server as a protected resource: its identifier and its metadata.
#[derive(Debug)]
pub struct ProtectedResource {
    /// The path of the metadata as RFC 9728 §3.1 forms it from the resource identifier
    /// (the well-known path inserted before the identifier's path).
    path: String,
    /// Its absolute URL, which the challenge names.
    url: String,
    /// The metadata document (JSON).
    document: String,
}

impl ProtectedResource {
    /// `resource`: this server's MCP endpoint as clients reach it (`https://host/mcp`);
    /// `issuers`: the authorization servers whose tokens it accepts.
    pub fn new(resource: &str, issuers: &[&str]) -> Result<Self, String> {
        check_url(resource, "--auth-resource")?;
        let uri: http::Uri = resource
            .parse()
            .map_err(|error| format!("--auth-resource {resource}: {error}"))?;
        if uri.query().is_some() {
            return Err(format!(
                "--auth-resource {resource} must not have a query (RFC 8707)"
            ));
        }
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let scheme = uri.scheme_str().unwrap_or("https");
        let suffix = uri.path().trim_end_matches('/');
        let path = format!("{WELL_KNOWN}{suffix}");
        let document = serde_json::json!({
            "resource": resource,
            "authorization_servers": issuers,
            "bearer_methods_supported": ["header"],
        });
        Ok(Self {
            url: format!("{scheme}://{authority}{path}"),
            path,
            document: document.to_string(),
        })
    }

    /// Whether a `GET` of `path` asks for the metadata: at the path RFC 9728 forms, and at
    /// the bare well-known path, which MCP clients try when they have no other.
    pub fn serves(&self, path: &str) -> bool {
        path == self.path || path == WELL_KNOWN
    }

    pub fn document(&self) -> &str {
        &self.document
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// The `WWW-Authenticate` value of a `401`: the bearer scheme, the metadata's URL when the
/// server is a protected resource, and, for a token that was presented, `invalid_token`
/// with a short description (RFC 6750 §3).
pub fn challenge(refusal: &Refusal, resource: Option<&ProtectedResource>) -> String {
    let mut challenge = r#"Bearer realm="code-mode""#.to_owned();
    if let Some(resource) = resource {
        challenge.push_str(&format!(r#", resource_metadata="{}""#, resource.url()));
    }
    if let Refusal::Invalid(description) = refusal {
        challenge.push_str(&format!(
            r#", error="invalid_token", error_description="{description}""#
        ));
    }
    challenge
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_is_found_where_rfc_9728_puts_it() {
        let resource =
            ProtectedResource::new("https://mcp.example:8443/mcp", &["https://idp.example"])
                .unwrap();
        assert_eq!(
            resource.url(),
            "https://mcp.example:8443/.well-known/oauth-protected-resource/mcp"
        );
        assert!(resource.serves("/.well-known/oauth-protected-resource/mcp"));
        assert!(resource.serves("/.well-known/oauth-protected-resource"));
        assert!(!resource.serves("/.well-known/oauth-protected-resource/other"));
        let document: serde_json::Value = serde_json::from_str(resource.document()).unwrap();
        assert_eq!(
            document,
            serde_json::json!({
                "resource": "https://mcp.example:8443/mcp",
                "authorization_servers": ["https://idp.example"],
                "bearer_methods_supported": ["header"],
            })
        );
        let root = ProtectedResource::new("https://mcp.example/", &[]).unwrap();
        assert_eq!(
            root.url(),
            "https://mcp.example/.well-known/oauth-protected-resource"
        );
        assert!(ProtectedResource::new("https://mcp.example/mcp?x=1", &[]).is_err());
        assert!(ProtectedResource::new("http://mcp.example/mcp", &[]).is_err());
    }

    #[test]
    fn the_challenge_names_the_metadata_and_the_error() {
        let resource = ProtectedResource::new("https://h.example/mcp", &[]).unwrap();
        assert_eq!(
            challenge(&Refusal::Missing, None),
            r#"Bearer realm="code-mode""#
        );
        assert_eq!(
            challenge(&Refusal::Invalid("the token has expired"), Some(&resource)),
            r#"Bearer realm="code-mode", resource_metadata="https://h.example/.well-known/oauth-protected-resource/mcp", error="invalid_token", error_description="the token has expired""#
        );
    }
}
