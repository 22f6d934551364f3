//! A gRPC client for any `codex-code-mode-host` binary, over the child's stdin and stdout
//! as codex drives it (`--listen grpc+stdio://`). The conformance and differential tests
//! and the bench drive both hosts, ours and codex's own, through it.

use crate::proto::code_mode_host_client::CodeModeHostClient;
use hyper_util::rt::TokioIo;
use std::io;
use std::sync::{Arc, Mutex};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint, Uri};

/// A host process and a client connected to it.
pub struct StdioHost {
    pub client: CodeModeHostClient<Channel>,
    child: Child,
}

impl StdioHost {
    /// Spawns `command` with piped stdin and stdout (stderr as the command says) and
    /// connects to it over HTTP/2 with prior knowledge, as codex does.
    pub async fn spawn(mut command: Command) -> io::Result<Self> {
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let channel = connect(tokio::io::join(stdout, stdin)).await?;
        let client = CodeModeHostClient::new(channel)
            .max_decoding_message_size(crate::grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::grpc::MAX_MESSAGE_BYTES);
        Ok(Self { client, child })
    }

    /// The host's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The child process, to wait for it or kill it.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

/// A channel over one byte stream (the only connection it will ever make).
pub async fn connect<I>(io: I) -> io::Result<Channel>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let slot = Arc::new(Mutex::new(Some(io)));
    let connector = tower::service_fn(move |_: Uri| {
        let io = slot.lock().ok().and_then(|mut slot| slot.take());
        async move {
            io.map(TokioIo::new)
                .ok_or_else(|| io::Error::other("the stdio connection was already used"))
        }
    });
    Endpoint::from_static("http://code-mode-host")
        .connect_with_connector(connector)
        .await
        .map_err(io::Error::other)
}
