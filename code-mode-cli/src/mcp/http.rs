//! `code-mode mcp --http`: the streamable-HTTP service in front of the MCP handler.
//!
//! It owns what makes the endpoint safe to expose: the start-up policy (a non-loopback
//! address needs `--allow-remote`, a credential, and TLS or `--allow-plaintext-remote`),
//! TLS (rustls, the settings the runtime's `--listen` loads), the credentials on every
//! request ([`super::auth`]: `401` with `WWW-Authenticate: Bearer` without them), the
//! sessions each principal may reach (another's session gets the `404` of an unknown one),
//! `Origin` validation (`403` for a foreign one; rmcp checks it, with the allow-list set
//! here), the session cap (`503` to an `initialize` past `--max-sessions`) and the
//! bookkeeping of which session is busy, which [`super::expiry`] uses to shut down idle
//! ones. `/mcp` is served, `/metrics` behind the same credentials, and with JWTs the
//! Protected Resource Metadata ([`super::resource`]) to anyone.

use super::auth::{Credentials, NamedTokens};
use super::expiry::{ExpiringSessions, InFlight, Owner};
pub use super::jwt::parse_algorithm;
use super::jwt::{JwksSource, JwtSettings, JwtVerifier};
use super::principal::{Principal, REQUESTER, Refusal};
use super::replay::Readers;
use super::resource::{ProtectedResource, challenge};
use super::server::{CodeModeServer, Shared};
use super::state::Use;
use crate::Failure;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The one path served.
const ENDPOINT: &str = "/mcp";
/// The trace exporter's counters, in Prometheus' text format.
const METRICS: &str = "/metrics";

/// The header that names a request's MCP session.
const SESSION_HEADER: &str = "mcp-session-id";

/// How long a client may take for sending a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle session lives by default: half an hour, long enough for a person
/// who steps away from an agent in the middle of a task, short enough that abandoned
/// sessions do not pile up over a working day.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 1800;

/// How many sessions may be open at once by default, sized for the 2-core, 24 GiB
/// machines this runs on. A session at rest costs little (its parked isolate and host
/// state; docs/BENCHMARKS.md has the figure); the bound is the worst case in which every
/// session has a cell at the default heap limit (128 MiB of heap plus 64 MiB of
/// `ArrayBuffer`s): 100 such cells take about 19 GiB, which leaves the rest of the
/// machine room.
pub const DEFAULT_MAX_SESSIONS: usize = 100;

/// Browser origins allowed by default on a loopback address: pages served from this
/// machine. A non-loopback address allows none unless `--allowed-origin` names them.
const LOOPBACK_ORIGINS: [&str; 6] = [
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
];

/// What `--auth-jwt-*` asked for: OAuth access tokens (JWTs) of one authorization server.
pub struct JwtOptions {
    /// The authorization server (`iss`).
    pub issuer: String,
    /// Its JWKS: a file, or an `https` URL.
    pub jwks: String,
    /// What tokens must carry in `aud`; the resource when not given.
    pub audience: Option<String>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// This server's MCP endpoint as clients reach it (RFC 9728's `resource`).
    pub resource: String,
}

/// What `--http` was asked to do.
pub struct HttpOptions {
    pub address: SocketAddr,
    pub allow_remote: bool,
    pub allow_plaintext_remote: bool,
    /// `--state-advertise`: where the other replicas of a shared store reach this one.
    pub advertise: Option<String>,
    pub auth_token_file: Option<PathBuf>,
    /// `NAME TOKEN` lines: a principal per static token.
    pub auth_tokens_file: Option<PathBuf>,
    pub jwt: Option<JwtOptions>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub allowed_origins: Vec<String>,
    pub idle_timeout: Duration,
    pub max_sessions: usize,
}

/// Settings the start-up policy accepted, with the token and TLS files loaded.
pub struct Checked {
    options: HttpOptions,
    credentials: Credentials,
    resource: Option<ProtectedResource>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl JwtOptions {
    /// The verifier (its JWKS read once) and the metadata of this resource.
    async fn start(&self) -> Result<(JwtVerifier, ProtectedResource), Failure> {
        super::jwt::check_url(&self.issuer, "--auth-jwt-issuer").map_err(Failure::usage)?;
        let resource = ProtectedResource::new(&self.resource, &[self.issuer.as_str()])
            .map_err(Failure::usage)?;
        let settings = JwtSettings {
            issuer: self.issuer.clone(),
            audience: self
                .audience
                .clone()
                .unwrap_or_else(|| self.resource.clone()),
            jwks: JwksSource::parse(&self.jwks).map_err(Failure::usage)?,
            algorithms: if self.algorithms.is_empty() {
                super::jwt::DEFAULT_ALGORITHMS.to_vec()
            } else {
                self.algorithms.clone()
            },
        };
        let verifier = JwtVerifier::start(settings)
            .await
            .map_err(|error| Failure::usage(error.to_string()))?;
        Ok((verifier, resource))
    }
}

impl HttpOptions {
    /// Loads the token, JWKS and TLS files and applies the start-up policy; every refusal
    /// says what to add. Runs before anything starts.
    pub async fn check(self) -> Result<Checked, Failure> {
        let address = self.address;
        let remote = !address.ip().is_loopback();
        if remote && !self.allow_remote {
            return Err(Failure::usage(format!(
                "--http {address} is not a loopback address; add --allow-remote to serve other machines"
            )));
        }
        let tokens = NamedTokens::configured(
            self.auth_token_file.as_deref(),
            self.auth_tokens_file.as_deref(),
        )
        .map_err(|error| Failure::usage(error.to_string()))?;
        let (jwt, resource) = match &self.jwt {
            Some(jwt) => {
                let (verifier, resource) = jwt.start().await?;
                (Some(verifier), Some(resource))
            }
            None => (None, None),
        };
        let credentials = Credentials { tokens, jwt };
        if remote && !credentials.required() {
            return Err(Failure::usage(format!(
                "--http {address} serves other machines, so it needs a credential: put a bearer \
                 token (e.g. from `openssl rand -hex 32`) in a file and pass --auth-token-file FILE, \
                 or set {}, or name a token per principal with --auth-tokens-file, or accept \
                 OAuth access tokens with --auth-jwt-issuer; clients then send \
                 `Authorization: Bearer <token>`",
                super::auth::TOKEN_ENV
            )));
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(
                code_mode_tls::server_config(
                    &code_mode_tls::TlsFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                        client_ca: None,
                    },
                    &[b"http/1.1"],
                )
                .map_err(|error| Failure::usage(error.to_string()))?,
            ),
            (None, None) => None,
            _ => {
                return Err(Failure::usage("--tls-cert and --tls-key go together"));
            }
        };
        if self.advertise.is_some() && tls.is_some() {
            return Err(Failure::usage(
                "--state-advertise names a plain http:// address, which a replica serving TLS \
                 (--tls-cert) does not answer: the other replicas would send its clients' \
                 tokens there in the clear; serve plaintext behind a TLS-terminating proxy \
                 (--allow-plaintext-remote), or give no --state-advertise",
            ));
        }
        if let Some(advertise) = &self.advertise
            && forward_target(advertise).is_none()
        {
            return Err(Failure::usage(format!(
                "--state-advertise {advertise}: expected a plain http://HOST:PORT address, which \
                 the other replicas forward requests to"
            )));
        }
        if remote && tls.is_none() && !self.allow_plaintext_remote {
            return Err(Failure::usage(format!(
                "--http {address} serves other machines without TLS, so the token and every script \
                 would cross the network in the clear: pass --tls-cert and --tls-key, or \
                 --allow-plaintext-remote if a TLS-terminating proxy stands in front"
            )));
        }
        Ok(Checked {
            options: self,
            credentials,
            resource,
            tls,
        })
    }

    /// rmcp's settings: Host and Origin validation, no keep-alive of its own.
    fn service_config(&self, stop: &CancellationToken) -> StreamableHttpServerConfig {
        let mut config = StreamableHttpServerConfig::default()
            .with_cancellation_token(stop.clone())
            .with_sse_keep_alive(Some(Duration::from_secs(15)))
            .with_sse_retry(Some(super::expiry::SSE_RETRY))
            .enforce_origin_validation();
        let mut origins = self.allowed_origins.clone();
        if self.address.ip().is_loopback() {
            origins.extend(LOOPBACK_ORIGINS.iter().map(|origin| (*origin).to_owned()));
        } else {
            // Any name may reach a remote address; the token, not the Host header, is what
            // keeps strangers out there.
            config = config.disable_allowed_hosts();
        }
        config.with_allowed_origins(origins)
    }
}

type Body = BoxBody<Bytes, Infallible>;
type Service = StreamableHttpService<CodeModeServer, ExpiringSessions>;

/// What every request is checked against.
struct Front {
    service: Service,
    sessions: Arc<ExpiringSessions>,
    credentials: Credentials,
    /// With JWTs: this server as a protected resource.
    resource: Option<ProtectedResource>,
    /// With a state directory: its store's figures join `/metrics`.
    state: Option<Arc<super::state::McpState>>,
    /// Requests' event streams, kept for a client whose connection broke.
    recordings: super::replay::Recordings,
}

/// SIGTERM, once it comes (never, if it cannot be listened for).
async fn terminated(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Serves until Ctrl-C or SIGTERM.
pub(super) async fn serve(shared: &Arc<Shared>, checked: Checked) -> Result<(), Failure> {
    let options = &checked.options;
    let address = options.address;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| Failure::runtime(format!("cannot listen on {address}: {error}")))?;
    let bound = listener
        .local_addr()
        .map_err(|error| Failure::runtime(error.to_string()))?;
    let stop = CancellationToken::new();
    let sessions = Arc::new(ExpiringSessions::new(
        options.max_sessions,
        options.idle_timeout,
    ));
    let factory_shared = Arc::clone(shared);
    let mut config = options.service_config(&stop);
    if let Some(state) = &shared.state {
        // A session a restarted server kept is found again by its id.
        config.session_store = Some(Arc::clone(state) as _);
    }
    let service = StreamableHttpService::new(
        move || Ok(CodeModeServer::new(&factory_shared)),
        Arc::clone(&sessions),
        config,
    );
    let front = Arc::new(Front {
        service,
        sessions: Arc::clone(&sessions),
        credentials: checked.credentials,
        resource: checked.resource,
        state: shared.state.clone(),
        recordings: super::replay::Recordings::default(),
    });
    let acceptor = checked.tls.map(tokio_rustls::TlsAcceptor::from);
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    if let Some(state) = &shared.state {
        // Where the other replicas forward a request for a session this one holds.
        let address = options.advertise.clone().or_else(|| {
            (acceptor.is_none() && !bound.ip().is_unspecified()).then(|| format!("http://{bound}"))
        });
        if let Some(address) = address {
            state.advertise(&address).await;
        }
    }
    eprintln!("code-mode mcp: serving streamable HTTP on {scheme}://{bound}{ENDPOINT}");
    if !address.ip().is_loopback() && acceptor.is_none() {
        eprintln!(
            "code-mode mcp: warning: serving {bound} without TLS (--allow-plaintext-remote): the \
             bearer token and every script cross the network in the clear unless a proxy encrypts them"
        );
    }
    tracing::info!(
        max_sessions = options.max_sessions,
        idle_timeout_secs = options.idle_timeout.as_secs(),
        tokens = front.credentials.tokens.len(),
        jwt = front.credentials.jwt.as_ref().map(JwtVerifier::issuer),
        "MCP HTTP service started"
    );
    tokio::spawn(Arc::clone(&sessions).reap(stop.clone()));
    // The workspace's one door: accept errors backed off, a connection cap, the opening
    // bounded in time.
    // Listened for from here on, so that a SIGTERM between two accepts is not lost.
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let gate =
        code_mode_tls::gate::Gate::new("mcp http", code_mode_tls::gate::DEFAULT_MAX_CONNECTIONS);
    loop {
        let admitted = tokio::select! {
            admitted = gate.accept(&listener) => admitted,
            _ = tokio::signal::ctrl_c() => break,
            // How an orchestrator stops it (a rolling update): the same clean stop.
            () = terminated(&mut sigterm) => break,
        };
        let front = Arc::clone(&front);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let code_mode_tls::gate::Admitted { stream, peer, slot } = admitted;
            let _slot = slot;
            if !code_mode_tls::gate::first_byte(&stream, peer).await {
                return;
            }
            match acceptor {
                None => serve_connection(front, stream).await,
                Some(acceptor) => {
                    if let Some(tls) = code_mode_tls::gate::handshake(&acceptor, stream, peer).await
                    {
                        serve_connection(front, tls).await;
                    }
                }
            }
        });
    }
    // What stopping does to the sessions is not kept: a server started again with the
    // same state directory goes on with them as they were.
    if let Some(state) = &shared.state {
        state.close().await;
    }
    stop.cancel();
    Ok(())
}

/// One HTTP/1.1 connection.
async fn serve_connection<S>(front: Arc<Front>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handler = hyper::service::service_fn(move |request| {
        let front = Arc::clone(&front);
        async move { Ok::<_, Infallible>(handle(&front, request).await) }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    if let Err(error) = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, handler)
        .await
    {
        tracing::debug!(%error, "HTTP connection ended");
    }
}

/// One request, checked in order: the resource metadata (open to anyone), credentials,
/// path, whose the named session is, the session cap, then rmcp (which checks Host,
/// Origin, the session id and the MCP message), run as the request's principal.
async fn handle(
    front: &Front,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    if let Some(resource) = &front.resource
        && request.method() == http::Method::GET
        && resource.serves(request.uri().path())
    {
        return json(http::StatusCode::OK, resource.document().to_owned());
    }
    let principal = if front.credentials.required() {
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        match front.credentials.check(authorization).await {
            Ok(principal) => principal,
            Err(refusal) => return unauthorized(&refusal, front.resource.as_ref()),
        }
    } else {
        Principal::Anonymous
    };
    // The trace exporter's counters (batches delivered and dropped) and the state store's
    // figures, behind the same credentials as the endpoint.
    if request.uri().path() == METRICS && request.method() == http::Method::GET {
        return metrics(front);
    }
    if request.uri().path() != ENDPOINT {
        return plain(
            http::StatusCode::NOT_FOUND,
            "not found: the MCP endpoint is /mcp",
        );
    }
    let method = request.method().clone();
    let named = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let mut request = match between_replicas(front, named.as_deref(), request).await {
        Ok(answered) => return answered,
        Err(here) => here,
    };
    let session = match named {
        Some(id) if !may_use(front, &id, &principal).await => {
            tracing::debug!(%principal, session = id, "a request named another principal's session");
            // rmcp answers it as it answers a session that does not exist, whatever the
            // method and headers (404, 406, a DELETE's 202): nothing tells the two apart.
            let unknown = unknown_session_id();
            request.headers_mut().insert(
                SESSION_HEADER,
                http::HeaderValue::from_str(&unknown).expect("hex is a header value"),
            );
            Some(unknown)
        }
        other => other,
    };
    let request = match taken_meanwhile(front, session.as_deref(), request).await {
        Ok(answered) => return answered,
        Err(here) => here,
    };
    let in_flight = match (session.as_deref(), &method) {
        (None, &http::Method::POST) if front.sessions.full() => return too_many_sessions(front),
        (Some(id), &http::Method::GET) => {
            front.sessions.touch(id);
            None
        }
        (Some(id), _) => front.sessions.begin(id),
        (None, _) => None,
    };
    let resuming = method == http::Method::GET && request.headers().contains_key(LAST_EVENT_ID);
    if resuming && let Some(resumed) = resumed_here(front, &request, session.as_deref()) {
        return finish(resumed, &method, in_flight);
    }
    // Who reads the answer: the handler asks before it lets an observation's output go
    // (one nobody reads is held for the cell's next `wait`).
    let readers = Readers::default();
    let mut request = request;
    request.extensions_mut().insert(readers.clone());
    let mut service = front.service.clone();
    let answered = REQUESTER.scope(
        principal,
        tower_service::Service::call(&mut service, request),
    );
    let response = match answered.await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let response = match session.as_deref() {
        _ if resuming => resumed_or_gone(response).await,
        Some(id) if method == http::Method::POST => front.recordings.record(id, response, readers),
        Some(id) if method == http::Method::DELETE => {
            front.recordings.forget(id);
            response
        }
        _ => response,
    };
    finish(response, &method, in_flight)
}

/// A request's stream kept here after its connection broke (rmcp's is gone by then),
/// resumed with `Last-Event-ID`, only by the principal whose open session it is (another's
/// `session` is an id nobody has by now). A browser's request (it has an `Origin`) goes to
/// rmcp, which checks the origin.
fn resumed_here(
    front: &Front,
    request: &hyper::Request<hyper::body::Incoming>,
    session: Option<&str>,
) -> Option<hyper::Response<Body>> {
    if request.headers().contains_key(http::header::ORIGIN) {
        return None;
    }
    let id = session?;
    if !matches!(front.sessions.owner(id), Owner::Of(_)) {
        return None;
    }
    let last = request.headers().get(LAST_EVENT_ID)?.to_str().ok()?;
    front.recordings.resume(id, last)
}

/// The header a client resumes an event stream with.
const LAST_EVENT_ID: &str = "last-event-id";

/// How long a resumed stream has to show it is not the empty one rmcp gives for a stream
/// it cannot resume.
const RESUME_PATIENCE: Duration = Duration::from_millis(100);

/// A stream resumed with `Last-Event-ID` that rmcp could not resume (it was this server's
/// before a restart, say): rmcp answers it with an empty stream, on which the official
/// SDKs reconnect again and again until their own timeout. It is answered `410 Gone`
/// instead, which they act on at once (they stop reconnecting after their few tries and
/// fail the request whose stream it was). A stream that gives a frame, or stays open, is
/// passed on whole.
async fn resumed_or_gone(response: hyper::Response<Body>) -> hyper::Response<Body> {
    use futures_util::StreamExt as _;
    if response.status() != http::StatusCode::OK {
        return response;
    }
    let (parts, mut body) = response.into_parts();
    match tokio::time::timeout(RESUME_PATIENCE, body.frame()).await {
        Ok(None) => {
            tracing::debug!("a stream resumed with Last-Event-ID is gone");
            plain(
                http::StatusCode::GONE,
                "Gone: the event stream cannot be resumed (the server that had it restarted); \
                 send the request again",
            )
        }
        Ok(Some(first)) => {
            let rest = http_body_util::BodyStream::new(body);
            let frames = futures_util::stream::once(std::future::ready(first)).chain(rest);
            hyper::Response::from_parts(
                parts,
                BodyExt::boxed(http_body_util::StreamBody::new(frames)),
            )
        }
        Err(_) => hyper::Response::from_parts(parts, body),
    }
}

/// What replicas do with a request between them: one forwarded here must name this
/// replica (one that names another, an address reused since it was recorded, or that a
/// client sent itself, is refused with 421); one for a session another live replica holds
/// goes there, at once, whole, its credentials with it, to be checked there again. The
/// request back when this replica serves it (the holder cannot be reached: it died, and
/// its lease runs out soon).
async fn between_replicas(
    front: &Front,
    named: Option<&str>,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, hyper::Request<hyper::body::Incoming>> {
    if let Some(meant) = request.headers().get(FORWARDED_HEADER) {
        let mine = front.state.as_ref().and_then(|state| state.name());
        if mine.is_none_or(|mine| meant.as_bytes() != mine.as_bytes()) {
            return Ok(plain(
                http::StatusCode::MISDIRECTED_REQUEST,
                "this replica is not the one the request was forwarded to; send it again",
            ));
        }
        return Err(request);
    }
    if let Some(id) = named
        && matches!(front.sessions.owner(id), Owner::NotOpen)
        && let Some(state) = &front.state
        && let Some(holder) = state.holder(id).await
    {
        return forward(&holder, request).await;
    }
    Err(request)
}

/// A request for a session whose holder died, that another replica took over while this
/// one waited out the lease too: it goes to that replica (else it would find the session
/// unknown here, a 404 that loses the client's session).
async fn taken_meanwhile(
    front: &Front,
    session: Option<&str>,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, hyper::Request<hyper::body::Incoming>> {
    if let Some(id) = session
        && matches!(front.sessions.owner(id), Owner::NotOpen)
        && let Some(state) = &front.state
        && !state.holds(id)
        && let Some(holder) = state.holder(id).await
    {
        return forward(&holder, request).await;
    }
    Err(request)
}

/// Whether `principal` may use session `id`: one open here must be its own; one kept by
/// the state store is asked there (and taken over from a dead replica only for its owner).
/// An id nobody knows passes, for rmcp to answer `404`.
async fn may_use(front: &Front, id: &str, principal: &Principal) -> bool {
    match front.sessions.owner(id) {
        Owner::Of(owner) => owner.as_ref() == Some(principal),
        Owner::NotOpen => match &front.state {
            None => true,
            Some(state) => match state.may_use(id, principal).await {
                Ok(Use::Allowed | Use::Unknown) => true,
                Ok(Use::Refused) => false,
                Err(error) => {
                    tracing::warn!(%error, "the state store could not say whose a session is");
                    false
                }
            },
        },
    }
}

/// `/metrics`: the trace exporter's counters and the state store's figures.
fn metrics(front: &Front) -> hyper::Response<Body> {
    let mut text = code_mode_trace::render_metrics();
    if let Some(state) = &front.state {
        text.push_str(&state.stats().render_metrics());
    }
    let mut response = hyper::Response::new(Full::new(Bytes::from(text)).boxed());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// What a forwarded request carries: the name (in the leases) of the replica it is meant
/// for, which serves it itself, never forwards it again, and refuses it (421) when the name
/// is not its own.
const FORWARDED_HEADER: &str = "x-code-mode-forwarded";

/// How long forwarding waits to connect to the replica that holds a session.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The `HOST:PORT` of a plain `http://HOST:PORT` address (a path, if any, is ignored).
fn forward_target(address: &str) -> Option<String> {
    let uri: http::Uri = address.parse().ok()?;
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let authority = uri.authority()?;
    authority.port_u16()?;
    Some(authority.as_str().to_owned())
}

/// Sends `request` to the replica at `holder` and gives its answer back as it streams (an
/// MCP stream included). The request back when that replica cannot be reached.
async fn forward(
    holder: &code_mode_state::Holder,
    mut request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, hyper::Request<hyper::body::Incoming>> {
    use futures_util::StreamExt as _;
    let (Some(target), Ok(name)) = (
        forward_target(&holder.address),
        http::HeaderValue::from_str(&holder.name),
    ) else {
        return Err(request);
    };
    let holder = holder.address.as_str();
    let connected = tokio::time::timeout(
        FORWARD_CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(&target),
    )
    .await;
    let Ok(Ok(stream)) = connected else {
        tracing::debug!(
            holder,
            "the replica that holds the session cannot be reached"
        );
        return Err(request);
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
    else {
        return Err(request);
    };
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "a forwarded request's connection ended");
        }
    });
    strip_hop_by_hop(request.headers_mut());
    request.headers_mut().insert(FORWARDED_HEADER, name);
    let Ok(answered) =
        tokio::time::timeout(FORWARD_ANSWER_TIMEOUT, sender.send_request(request)).await
    else {
        tracing::warn!(
            holder,
            "the replica that holds the session did not answer in time"
        );
        return Ok(plain(
            http::StatusCode::GATEWAY_TIMEOUT,
            "the replica that holds this session did not answer in time; try again",
        ));
    };
    match answered {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // The answer streams through; a broken stream ends it, as a dropped
            // connection would.
            let frames = http_body_util::BodyStream::new(body)
                .scan((), |(), frame| std::future::ready(frame.ok()))
                .map(Ok::<_, Infallible>);
            Ok(hyper::Response::from_parts(
                parts,
                BodyExt::boxed(http_body_util::StreamBody::new(frames)),
            ))
        }
        Err(error) => {
            tracing::warn!(%error, holder, "a request forwarded to the replica that holds its session failed");
            Ok(plain(
                http::StatusCode::BAD_GATEWAY,
                "the replica that holds this session did not answer; try again",
            ))
        }
    }
}

/// How long a forwarded request waits for the holder's answer to begin (its headers; an
/// event stream then runs as long as it runs).
const FORWARD_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Removes the headers that describe one connection, not the message (RFC 9110 7.6.1):
/// `Connection` and those it names, and the fixed hop-by-hop set.
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<http::HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| http::HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// A session id nobody has (128 random bits), put in place of another principal's.
fn unknown_session_id() -> String {
    crate::serve::fresh_id('m')
}

/// The response as sent: the session's request stays in flight until its body ends, and a
/// session `DELETE` is answered `200` (rmcp says `202`, which the official SDKs log as a
/// failed termination).
fn finish(
    response: hyper::Response<Body>,
    method: &http::Method,
    in_flight: Option<InFlight>,
) -> hyper::Response<Body> {
    let (mut parts, body) = response.into_parts();
    if method == http::Method::DELETE && parts.status == http::StatusCode::ACCEPTED {
        parts.status = http::StatusCode::OK;
    }
    let body = match in_flight {
        None => body,
        Some(guard) => body
            .map_frame(move |frame| {
                let _held = &guard;
                frame
            })
            .boxed(),
    };
    hyper::Response::from_parts(parts, body)
}

fn plain(status: http::StatusCode, text: &'static str) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `401`, with the challenge of RFC 6750 (and RFC 9728's metadata URL with JWTs): no
/// credentials, or credentials not valid here.
fn unauthorized(refusal: &Refusal, resource: Option<&ProtectedResource>) -> hyper::Response<Body> {
    let text = format!("unauthorized: {refusal}");
    let mut response = hyper::Response::new(Full::new(Bytes::from(text)).boxed());
    *response.status_mut() = http::StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(value) = http::HeaderValue::try_from(challenge(refusal, resource)) {
        headers.insert(http::header::WWW_AUTHENTICATE, value);
    }
    response
}

/// A JSON document.
fn json(status: http::StatusCode, body: String) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// `503` to a new session past the cap, as a JSON-RPC error an MCP client shows.
fn too_many_sessions(front: &Front) -> hyper::Response<Body> {
    let max = front.sessions.max_sessions();
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": -32000,
            "message": format!(
                "code-mode mcp has {max} sessions open, its limit (--max-sessions); close one \
                 (HTTP DELETE) or try again once an idle one has expired"
            ),
        }
    });
    let mut response = hyper::Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("30"),
    );
    response
}
