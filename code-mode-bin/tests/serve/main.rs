//! Drives the real `code-mode-bin` with raw frames: the test is the host. It listens on a
//! local socket in a fresh 0700 directory, spawns the binary, and speaks the wire protocol.

use bytes::{BufMut, BytesMut};
use code_mode_conformance::Scratch;
use code_mode_internal::{SessionCall, SessionReply};
use code_mode_protocol::{
    CallId, CellResponse, ContentItem, ExecRequest, SessionOptions, StartedCell,
    StartedPendingCell, ToolDefinition, ToolKind, WaitRequest,
};
use code_mode_wire::*;
use futures_util::{SinkExt, StreamExt};
use interprocess::local_socket::tokio::prelude::*;
use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio_util::codec::Framed;

/// Any single expected message must arrive within this time.
const MESSAGE_DEADLINE: Duration = Duration::from_secs(30);

const BIN: &str = env!("CARGO_BIN_EXE_code-mode-bin");

/// The host side of one runtime process.
struct Host {
    child: Child,
    framed: Framed<Stream, FrameCodec<ServerMessage, ClientMessage>>,
    /// Messages received while looking for another one.
    backlog: VecDeque<ServerMessage>,
    /// Requests whose answer the runtime holds until this host says it was taken.
    holding: std::collections::HashSet<u64>,
    _dir: Scratch,
}

async fn listen() -> (Listener, PathBuf, Scratch) {
    let dir = Scratch::new();
    let path = dir.0.join("runtime.sock");
    let name = path.clone().to_fs_name::<GenericFilePath>().unwrap();
    let listener = ListenerOptions::new().name(name).create_tokio().unwrap();
    (listener, path, dir)
}

fn spawn(path: &PathBuf) -> Child {
    Command::new(BIN)
        .arg("--socket")
        .arg(path)
        .arg("--log")
        .arg("info")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn code-mode-bin")
}

impl Host {
    /// Spawns the runtime and accepts its connection (no handshake yet).
    async fn start() -> Self {
        let (listener, path, dir) = listen().await;
        let child = spawn(&path);
        let stream = tokio::time::timeout(MESSAGE_DEADLINE, listener.accept())
            .await
            .expect("the runtime connects")
            .expect("accept");
        Self {
            child,
            framed: Framed::new(stream, FrameCodec::new()),
            backlog: VecDeque::new(),
            holding: std::collections::HashSet::new(),
            _dir: dir,
        }
    }

    /// Spawns the runtime with its socket already connected, as descriptor 3
    /// (`--socket-fd`), as a host that forks its runtime hands it over.
    fn start_inherited() -> Self {
        use std::os::fd::{AsRawFd, OwnedFd};
        use std::os::unix::process::CommandExt as _;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
        let inherited = theirs.as_raw_fd();
        let mut command = std::process::Command::new(BIN);
        command
            .args(["--socket-fd", "3", "--log", "info"])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: between fork and exec, only dup2(2) and fcntl(2), which are
        // async-signal-safe, on a descriptor the child inherited.
        unsafe {
            command.pre_exec(move || {
                let placed = if inherited == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(inherited, 3)
                };
                if placed < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn code-mode-bin");
        drop(theirs);
        ours.set_nonblocking(true).expect("non-blocking");
        let stream =
            interprocess::os::unix::uds_local_socket::tokio::Stream::try_from(OwnedFd::from(ours))
                .map(Stream::from)
                .expect("adopt the socket");
        Self {
            child,
            framed: Framed::new(stream, FrameCodec::new()),
            backlog: VecDeque::new(),
            holding: std::collections::HashSet::new(),
            _dir: Scratch::new(),
        }
    }

    /// Sends request `id`: an exec of `source` in session 1, traced under `span_id` of
    /// `trace_id` (sampled), whose answer the test takes.
    async fn traced_exec(&mut self, id: u64, source: &str, trace_id: [u8; 16], span_id: [u8; 8]) {
        self.send(ClientMessage::Request {
            id: RequestId(id),
            request: Request::Session {
                session: SessionId(1),
                call: SessionCall::Execute(ExecRequest::new(source)).into(),
            },
            trace: Some(code_mode_wire::payload::TraceContext {
                trace_id,
                span_id,
                flags: 1,
            }),
        })
        .await;
        self.holding.insert(id);
    }

    /// Spawns the runtime and completes the handshake.
    async fn ready() -> Self {
        Self::start().await.handshake().await
    }

    /// Says hello and checks the runtime's Ready (sandboxed).
    async fn handshake(self) -> Self {
        let mut host = self;
        host.send(ClientMessage::Hello(ClientHello::current("serve test")))
            .await;
        match host.next().await {
            ServerMessage::Ready(ready) => {
                assert_eq!(ready.version, PROTOCOL_VERSION);
                assert!(ready.sandbox.contains("no_new_privs"), "{}", ready.sandbox);
                assert!(
                    ready.sandbox.contains("seccomp filter"),
                    "{}",
                    ready.sandbox
                );
            }
            other => panic!("expected Ready, got {other:?}"),
        }
        host
    }

    async fn send(&mut self, message: ClientMessage) {
        self.framed.send(message).await.expect("send a frame");
    }

    async fn request(&mut self, id: u64, request: Request) {
        if request.holds_answer() {
            self.holding.insert(id);
        }
        self.send(ClientMessage::Request {
            id: RequestId(id),
            request,
            trace: None,
        })
        .await;
    }

    /// The next message from the runtime (backlog first).
    async fn next(&mut self) -> ServerMessage {
        if let Some(message) = self.backlog.pop_front() {
            return message;
        }
        self.next_matching(|message| !matches!(message, ServerMessage::Offer { .. }))
            .await
    }

    /// The first message matching `wanted`; others are kept for later. An offered final
    /// answer nobody asked for is given back at once: a cell's next wait gets it from the
    /// runtime, as before offers (a test that wants one asks for it).
    async fn next_matching(&mut self, wanted: impl Fn(&ServerMessage) -> bool) -> ServerMessage {
        if let Some(index) = self.backlog.iter().position(&wanted) {
            return self.backlog.remove(index).expect("indexed");
        }
        loop {
            let message = tokio::time::timeout(MESSAGE_DEADLINE, self.framed.next())
                .await
                .expect("a message in time")
                .expect("the connection is open")
                .expect("a valid frame");
            if wanted(&message) {
                return message;
            }
            if let ServerMessage::Offer {
                session, cell_id, ..
            } = message
            {
                self.send(ClientMessage::OfferGivenBack { session, cell_id })
                    .await;
                continue;
            }
            self.backlog.push_back(message);
        }
    }

    /// The response to request `id`, without the times the runtime measured (so that a
    /// test compares what it says); an answer the runtime holds is taken, as a host's
    /// caller takes it.
    async fn response(&mut self, id: u64) -> Result<Response, WireError> {
        let response = self.response_untaken(id).await;
        if response.is_ok() && self.holding.remove(&id) {
            self.send(ClientMessage::Taken { id: RequestId(id) }).await;
        }
        response
    }

    /// [`Host::response`] without the word to the runtime.
    async fn response_untaken(&mut self, id: u64) -> Result<Response, WireError> {
        match self
            .next_matching(|m| matches!(m, ServerMessage::Response { id: r, .. } if r.0 == id))
            .await
        {
            ServerMessage::Response { result, .. } => result.map(timeless),
            _ => unreachable!("matched a response"),
        }
    }

    /// Opens a session with default options as request `id`; asserts it is `expected`.
    async fn open_session(&mut self, id: u64, expected: SessionId) {
        self.request(
            id,
            Request::OpenSession {
                options: SessionOptions::default().into(),
                stored_values: Default::default(),
            },
        )
        .await;
        assert_eq!(
            self.response(id).await,
            Ok(Response::SessionOpened(expected))
        );
    }

    async fn delegate_call(&mut self) -> (DelegateId, DelegateCall) {
        match self
            .next_matching(|m| matches!(m, ServerMessage::Delegate { .. }))
            .await
        {
            ServerMessage::Delegate { id, call, .. } => (id, call),
            _ => unreachable!("matched a delegate call"),
        }
    }

    /// Waits for the process to exit; returns its code and everything it wrote.
    async fn finish(mut self) -> (Option<i32>, String, String) {
        let _ = self.framed.get_mut().shutdown().await;
        drop(self.framed);
        let output = tokio::time::timeout(MESSAGE_DEADLINE, self.child.wait_with_output())
            .await
            .expect("the runtime exits")
            .expect("wait for the runtime");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

fn text(text: &str) -> ContentItem {
    ContentItem::text(text)
}

fn tools() -> Vec<ToolDefinition> {
    vec![
        ToolDefinition::new("echo", "echoes", ToolKind::Function),
        ToolDefinition::new("block", "never answers", ToolKind::Function),
    ]
}

#[tokio::test]
async fn a_whole_session_over_raw_frames() {
    let mut host = Host::ready().await;
    host.open_session(1, SessionId(1)).await;

    let source = r#"
        text("start");
        const echoed = await tools.echo({ a: 1 });
        text("echo " + echoed.a);
        notify("half way");
        yield_control();
        text("after yield");
        await tools.block();
        text("never");
    "#;
    host.request(
        2,
        Request::Session {
            session: SessionId(1),
            call: SessionCall::Execute(
                ExecRequest::new(source)
                    .with_tools(tools())
                    .with_tool_call_id("call_7"),
            )
            .into(),
        },
    )
    .await;
    // The admission comes first: before the cell's first delegate call and its response.
    let first = host
        .next_matching(|m| {
            matches!(
                m,
                ServerMessage::Admitted { .. }
                    | ServerMessage::Delegate { .. }
                    | ServerMessage::Response { .. }
            )
        })
        .await;
    assert_eq!(
        first,
        ServerMessage::Admitted {
            id: RequestId(2),
            cell_id: "1".into(),
        }
    );
    let (echo_id, call) = host.delegate_call().await;
    assert_eq!(
        call,
        DelegateCall::InvokeTool {
            cell_id: "1".into(),
            call_id: CallId::new(1).into(),
            tool_name: "echo".into(),
            kind: ToolKind::Function.into(),
            input: Some(r#"{"a":1}"#.into()),
            exec_call_id: Some("call_7".into()),
        }
    );
    host.send(ClientMessage::DelegateReply {
        id: echo_id,
        reply: DelegateReply::ToolResult(Ok(r#"{"a":42}"#.into())),
    })
    .await;
    // The notification and the next tool call race to the wire: match each by kind.
    let notification = host
        .next_matching(|m| {
            matches!(
                m,
                ServerMessage::Delegate {
                    call: DelegateCall::Notify { .. },
                    ..
                }
            )
        })
        .await;
    let ServerMessage::Delegate {
        id: notify_id,
        call,
        ..
    } = notification
    else {
        unreachable!("matched a notification")
    };
    assert_eq!(
        call,
        DelegateCall::Notify {
            cell_id: "1".into(),
            text: "half way".into()
        }
    );
    host.send(ClientMessage::DelegateReply {
        id: notify_id,
        reply: DelegateReply::Notified,
    })
    .await;
    assert_eq!(
        host.response(2).await,
        Ok(Response::Reply(
            SessionReply::Started(StartedCell {
                cell_id: "1".into(),
                initial_response: CellResponse::Yielded {
                    cell_id: "1".into(),
                    content_items: vec![text("start"), text("echo 42")],
                    wall_time: std::time::Duration::ZERO,
                },
            })
            .into()
        ))
    );

    let (block_id, call) = host.delegate_call().await;
    assert!(matches!(call, DelegateCall::InvokeTool { ref tool_name, .. } if tool_name == "block"));
    host.request(
        3,
        Request::Session {
            session: SessionId(1),
            call: SessionCall::Wait(WaitRequest::new("1").with_yield_time_ms(200)).into(),
        },
    )
    .await;
    assert_eq!(
        host.response(3).await,
        Ok(Response::Reply(
            SessionReply::Cell(CellResponse::Yielded {
                cell_id: "1".into(),
                content_items: vec![text("after yield")],
                wall_time: std::time::Duration::ZERO,
            })
            .into()
        ))
    );

    host.request(
        4,
        Request::Session {
            session: SessionId(1),
            call: SessionCall::Terminate {
                cell_id: "1".into(),
            }
            .into(),
        },
    )
    .await;
    // The in-flight tool call is cancelled before terminate answers.
    let cancel = host
        .next_matching(|m| matches!(m, ServerMessage::CancelDelegate { .. }))
        .await;
    assert_eq!(cancel, ServerMessage::CancelDelegate { id: block_id });
    // A well-behaved host acknowledges once its delegate stopped.
    host.send(ClientMessage::DelegateReply {
        id: block_id,
        reply: DelegateReply::Cancelled,
    })
    .await;
    assert_eq!(
        host.response(4).await,
        Ok(Response::Reply(
            SessionReply::Cell(CellResponse::Terminated {
                cell_id: "1".into(),
                content_items: vec![],
                wall_time: std::time::Duration::ZERO,
            })
            .into()
        ))
    );
    let closed = host
        .next_matching(|m| matches!(m, ServerMessage::CellClosed { .. }))
        .await;
    assert_eq!(
        closed,
        ServerMessage::CellClosed {
            session: SessionId(1),
            cell_id: "1".into()
        }
    );
    // A late, second reply to the settled call is harmless.
    host.send(ClientMessage::DelegateReply {
        id: block_id,
        reply: DelegateReply::ToolResult(Ok("1".into())),
    })
    .await;

    // Errors: an unknown session, an unknown cell.
    host.request(
        5,
        Request::Session {
            session: SessionId(9),
            call: SessionCall::Wait(WaitRequest::new("1")).into(),
        },
    )
    .await;
    assert_eq!(
        host.response(5).await,
        Err(WireError::MissingSession(SessionId(9)))
    );
    host.request(
        6,
        Request::Session {
            session: SessionId(1),
            call: SessionCall::Wait(WaitRequest::new("7")).into(),
        },
    )
    .await;
    assert_eq!(
        host.response(6).await,
        Ok(Response::Reply(
            SessionReply::Cell(CellResponse::missing("7")).into()
        ))
    );

    // A second session, then shutdown of the first.
    host.open_session(7, SessionId(2)).await;
    host.request(
        8,
        Request::Session {
            session: SessionId(1),
            call: SessionCall::Shutdown.into(),
        },
    )
    .await;
    assert_eq!(
        host.response(8).await,
        Ok(Response::Reply(SessionReply::ShutDown.into()))
    );
    host.request(
        9,
        Request::Session {
            session: SessionId(1),
            call: SessionCall::Execute(ExecRequest::new("1")).into(),
        },
    )
    .await;
    assert_eq!(
        host.response(9).await,
        Err(WireError::MissingSession(SessionId(1)))
    );

    let (code, stdout, stderr) = host.finish().await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(stdout, "", "the runtime never writes to stdout");
    assert!(stderr.contains("handshake done"), "stderr: {stderr}");
}

/// A cell's writes reach the host in a `Committed` message before the response that ends
/// the cell (contract §7: the host's copy is never behind what a caller was told).
#[tokio::test]
async fn a_cells_writes_are_committed_before_its_final_response() {
    let mut host = Host::ready().await;
    host.open_session(1, SessionId(1)).await;
    host.request(
        2,
        Request::Session {
            session: SessionId(1),
            call: SessionCall::Execute(ExecRequest::new(
                r#"store("k", { a: [1, "é"] }); store("gone", 1); store("gone", 2); text("done");"#,
            ))
            .into(),
        },
    )
    .await;
    let first = host
        .next_matching(|m| {
            matches!(
                m,
                ServerMessage::Committed { .. } | ServerMessage::Response { .. }
            )
        })
        .await;
    let ServerMessage::Committed {
        session,
        cell_id,
        writes,
    } = first
    else {
        panic!("the response came before the commit: {first:?}");
    };
    assert_eq!((session, cell_id), (SessionId(1), "1".into()));
    let mut writes: Vec<(String, String)> = writes
        .into_iter()
        .map(|(key, json)| (key, json.to_string()))
        .collect();
    writes.sort();
    assert_eq!(
        writes,
        [
            ("gone".to_owned(), "2".to_owned()),
            ("k".to_owned(), r#"{"a":[1,"é"]}"#.to_owned())
        ]
    );
    let response = timeless(host.response(2).await.expect("the cell's response"));
    assert_eq!(
        response,
        Response::Reply(
            SessionReply::Started(StartedCell {
                cell_id: "1".into(),
                initial_response: CellResponse::Result {
                    cell_id: "1".into(),
                    content_items: vec![text("done")],
                    failure: None,
                    wall_time: std::time::Duration::ZERO,
                },
            })
            .into()
        )
    );
}

#[tokio::test]
async fn pending_requests_can_be_cancelled_and_running_cells_die_with_the_connection() {
    let mut host = Host::ready().await;
    host.open_session(1, SessionId(1)).await;
    host.request(
        2,
        Request::Session {
            session: SessionId(1),
            call: SessionCall::Execute(
                ExecRequest::new("text('spin'); while (true) {}").with_yield_time_ms(100),
            )
            .into(),
        },
    )
    .await;
    assert!(matches!(
        host.response(2).await,
        Ok(Response::Reply(payload::SessionReply::Started { .. }))
    ));
    host.request(
        3,
        Request::Session {
            session: SessionId(1),
            call: SessionCall::Wait(WaitRequest::new("1").with_yield_time_ms(60_000)).into(),
        },
    )
    .await;
    host.send(ClientMessage::CancelRequest { id: RequestId(3) })
        .await;
    assert_eq!(host.response(3).await, Err(WireError::Cancelled));
    // Closing the connection shuts the CPU-bound cell down and the process exits cleanly.
    let (code, stdout, stderr) = host.finish().await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(stdout, "");
}

#[tokio::test]
async fn a_hello_with_no_common_version_is_refused() {
    let mut host = Host::start().await;
    host.send(ClientMessage::Hello(ClientHello {
        versions: vec![99],
        required_capabilities: vec![],
        optional_capabilities: vec![],
        client: "future host".into(),
    }))
    .await;
    assert_eq!(
        host.next().await,
        ServerMessage::Rejected(HandshakeRejection::NoCommonVersion {
            client: vec![99],
            server: vec![PROTOCOL_VERSION],
        })
    );
    let (code, stdout, stderr) = host.finish().await;
    assert_eq!(code, Some(1));
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("no common protocol version"),
        "stderr: {stderr}"
    );
}

#[tokio::test]
async fn a_request_before_the_hello_is_refused() {
    let mut host = Host::start().await;
    host.request(
        1,
        Request::Session {
            session: SessionId(1),
            call: SessionCall::Shutdown.into(),
        },
    )
    .await;
    assert!(matches!(
        host.next().await,
        ServerMessage::Rejected(HandshakeRejection::InvalidHello(_))
    ));
    let (code, _, _) = host.finish().await;
    assert_eq!(code, Some(1));
}

#[tokio::test]
async fn an_oversized_frame_closes_the_connection_with_a_logged_reason() {
    let mut host = Host::ready().await;
    let mut frame = BytesMut::new();
    frame.put_u32_le(u32::MAX);
    frame.put_slice(b"junk");
    host.framed.get_mut().write_all(&frame).await.unwrap();
    host.framed.get_mut().flush().await.unwrap();
    let closed = tokio::time::timeout(MESSAGE_DEADLINE, host.framed.next())
        .await
        .expect("the runtime reacts");
    assert!(
        closed.is_none(),
        "expected the connection to close, got {closed:?}"
    );
    let (code, stdout, stderr) = host.finish().await;
    assert_eq!(code, Some(1));
    assert_eq!(stdout, "");
    assert!(stderr.contains("exceeds the maximum"), "stderr: {stderr}");
}

/// The runtime holds a cell's answer until the host says what became of it: one given
/// back goes to the cell's next observation (the cell stays open for it), one taken closes
/// the cell. A word twice is a violation.
#[tokio::test]
async fn an_answer_given_back_goes_to_the_next_observation_and_a_taken_one_closes_the_cell() {
    let mut host = Host::ready().await;
    host.open_session(1, SessionId(1)).await;
    host.request(
        2,
        Request::Session {
            session: SessionId(1),
            call: SessionCall::Execute(ExecRequest::new(r#"text("kept");"#)).into(),
        },
    )
    .await;
    let result = CellResponse::Result {
        cell_id: "1".into(),
        content_items: vec![text("kept")],
        failure: None,
        wall_time: std::time::Duration::ZERO,
    };
    assert_eq!(
        host.response_untaken(2).await,
        Ok(Response::Reply(
            SessionReply::Started(StartedCell {
                cell_id: "1".into(),
                initial_response: result.clone(),
            })
            .into()
        ))
    );
    host.send(ClientMessage::GivenBack { id: RequestId(2) })
        .await;
    host.request(
        3,
        Request::Session {
            session: SessionId(1),
            call: SessionCall::Wait(WaitRequest::new("1")).into(),
        },
    )
    .await;
    assert_eq!(
        host.response_untaken(3).await,
        Ok(Response::Reply(SessionReply::Cell(result).into()))
    );
    // The cell is not closed while its final answer is held: the close comes after the
    // word.
    assert!(
        !host
            .backlog
            .iter()
            .any(|m| matches!(m, ServerMessage::CellClosed { .. })),
        "{:?}",
        host.backlog
    );
    host.send(ClientMessage::Taken { id: RequestId(3) }).await;
    assert_eq!(
        host.next_matching(|m| matches!(m, ServerMessage::CellClosed { .. }))
            .await,
        ServerMessage::CellClosed {
            session: SessionId(1),
            cell_id: "1".into()
        }
    );
    // The same word again: the answer is no longer held.
    host.send(ClientMessage::Taken { id: RequestId(3) }).await;
    let (code, _, stderr) = host.finish().await;
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("Taken for request 3, which holds no answer"),
        "stderr: {stderr}"
    );
}

#[tokio::test]
async fn protocol_violations_close_the_connection() {
    // A duplicate request id in flight, a reply to a call never made, a second hello.
    let violations: Vec<Vec<ClientMessage>> = vec![
        vec![
            ClientMessage::Request {
                id: RequestId(1),
                request: Request::OpenSession {
                    options: SessionOptions {
                        max_yield_time_ms: None,
                        ..SessionOptions::default()
                    }
                    .into(),
                    stored_values: Default::default(),
                },
                trace: None,
            },
            ClientMessage::Request {
                id: RequestId(2),
                request: Request::Session {
                    session: SessionId(1),
                    call: SessionCall::Execute(ExecRequest::new("while (true) {}")).into(),
                },
                trace: None,
            },
            ClientMessage::Request {
                id: RequestId(2),
                request: Request::Session {
                    session: SessionId(1),
                    call: SessionCall::Shutdown.into(),
                },
                trace: None,
            },
        ],
        vec![ClientMessage::DelegateReply {
            id: DelegateId(5),
            reply: DelegateReply::Notified,
        }],
        vec![ClientMessage::Hello(ClientHello::current("again"))],
        // A word for an answer the runtime does not hold: an open session's is not held.
        vec![
            ClientMessage::Request {
                id: RequestId(1),
                request: Request::OpenSession {
                    options: SessionOptions::default().into(),
                    stored_values: Default::default(),
                },
                trace: None,
            },
            ClientMessage::Taken { id: RequestId(1) },
        ],
        vec![ClientMessage::GivenBack { id: RequestId(3) }],
    ];
    for messages in violations {
        let mut host = Host::ready().await;
        for message in messages {
            host.send(message).await;
        }
        let (code, stdout, stderr) = host.finish().await;
        assert_eq!(code, Some(1), "stderr: {stderr}");
        assert_eq!(stdout, "");
        assert!(stderr.contains("protocol violation"), "stderr: {stderr}");
    }
}

#[tokio::test]
async fn the_command_line_is_checked() {
    let version = Command::new(BIN).arg("--version").output().await.unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        concat!("code-mode-bin ", env!("CARGO_PKG_VERSION"))
    );

    let missing = Command::new(BIN).output().await.unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(missing.stdout.is_empty());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--socket <PATH>"));

    let unknown = Command::new(BIN)
        .args(["--socket", "/x", "--frobnicate"])
        .output()
        .await
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("--frobnicate"));

    let nowhere = Command::new(BIN)
        .args(["--socket", "/nonexistent/dir/runtime.sock"])
        .output()
        .await
        .unwrap();
    assert_eq!(nowhere.status.code(), Some(1));
    assert!(nowhere.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&nowhere.stderr)
            .contains("cannot connect to /nonexistent/dir/runtime.sock"),
        "{}",
        String::from_utf8_lossy(&nowhere.stderr)
    );
}

#[tokio::test]
async fn a_socket_handed_over_as_a_descriptor_is_served_and_anything_else_is_refused() {
    let mut host = Host::start_inherited().handshake().await;
    host.open_session(1, SessionId(1)).await;
    host.request(
        2,
        Request::Session {
            session: SessionId(1),
            call: SessionCall::Execute(ExecRequest::new(r#"text("over fd " + (6 * 7));"#)).into(),
        },
    )
    .await;
    let finished = host
        .next_matching(|m| {
            matches!(
                m,
                ServerMessage::Response {
                    id: RequestId(2),
                    ..
                }
            )
        })
        .await;
    assert!(
        format!("{finished:?}").contains("over fd 42"),
        "{finished:?}"
    );

    // A descriptor that is no socket, or none at all, is a usage error said plainly.
    let stderr = usage_error(&["--socket-fd", "0"]).await;
    assert!(stderr.contains("--socket-fd 0: not a socket"), "{stderr}");
    let stderr = usage_error(&["--socket-fd", "97"]).await;
    assert!(
        stderr.contains("--socket-fd 97: Bad file descriptor"),
        "{stderr}"
    );
    let stderr = usage_error(&["--socket-fd", "3", "--socket", "/x"]).await;
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

/// Runs the binary with `args` (stdin on /dev/null), checks that it refused them as a
/// usage error (exit 2), and returns what it said on stderr.
async fn usage_error(args: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs the runtime's sandbox self test `action` (`--sandbox-self-test`).
async fn self_test(action: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["--sandbox-self-test", action])
        .output()
        .await
        .unwrap()
}

/// Checks that the self test refuses `/etc/passwd` to `<prefix>read:` and kills the
/// process on `<prefix>exec:`; returns what the read printed.
async fn refuses_a_read_and_kills_on_exec(prefix: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let read = self_test(&format!("{prefix}read:/etc/passwd")).await;
    let stderr = String::from_utf8_lossy(&read.stderr).into_owned();
    assert!(read.status.success(), "{stderr}");
    assert!(
        stderr.contains("read /etc/passwd: refused: Permission denied"),
        "{stderr}"
    );
    assert!(stderr.contains("landlock ABI"), "{stderr}");
    assert!(read.stdout.is_empty());
    let exec = self_test(&format!("{prefix}exec:/bin/true")).await;
    assert_eq!(
        exec.status.signal(),
        Some(libc::SIGSYS),
        "{:?}: {}",
        exec.status,
        String::from_utf8_lossy(&exec.stderr)
    );
    stderr
}

#[tokio::test]
async fn the_sandbox_refuses_files_and_kills_on_exec() {
    use std::os::unix::process::ExitStatusExt;
    refuses_a_read_and_kills_on_exec("").await;

    // Rule by rule: a new socket and (on x86_64) any x32 system call kill the process;
    // `clone3` answers ENOSYS so that libc falls back to `clone`; `tkill` (whose target
    // the filter cannot see) and `io_uring` (whose operations, a socket among them, it
    // cannot see) answer EPERM; threads are allowed. The rules are chained into one
    // program: each is reached past the ones before it.
    let mut killed = vec!["socket:", "signal:1", "signal:0", "signal:-1"];
    if cfg!(target_arch = "x86_64") {
        killed.push("x32:");
    }
    for action in killed {
        let output = self_test(action).await;
        assert_eq!(
            output.status.signal(),
            Some(libc::SIGSYS),
            "{action} {:?}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for action in [
        "clone3:",
        "tkill:",
        "refused:io_uring_setup",
        "thread:",
        "signal:self",
    ] {
        let output = self_test(action).await;
        assert!(
            output.status.success(),
            "{action} {:?}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Signals, limits, priorities and scheduling reach the runtime's own process only. Each
/// rule is probed at the runtime's parent, this test (`refused:<call>`, with values that
/// change nothing should the rule fail open): a signal by `tgkill` or `rt_(tg)sigqueueinfo`
/// kills the runtime; the others answer `EPERM`, and those refused whatever the target
/// (a pidfd's signal, a file's owner for `SIGIO`) are probed at the runtime too, a pidfd
/// of the parent is refused (`pidfd_open`; the self test signals the parent by one it
/// opened before its sandbox), and a terminal's input, process group and signals are
/// refused on any descriptor. A process
/// group or user's priority is refused whoever it is. The runtime's own (`allowed:<call>`,
/// at 0 and at its pid) goes through.
#[tokio::test]
async fn the_sandbox_keeps_signals_limits_and_scheduling_to_the_runtime() {
    use std::os::unix::process::ExitStatusExt;
    for call in ["tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"] {
        let output = self_test(&format!("refused:{call}")).await;
        assert_eq!(
            output.status.signal(),
            Some(libc::SIGSYS),
            "{call} {:?}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let own = [
        "prlimit64",
        "setpriority",
        "ioprio_set",
        "sched_setaffinity",
        "sched_setscheduler",
        "sched_setparam",
        "sched_setattr",
    ];
    let refused = [
        "pidfd_send_signal",
        "pidfd_open",
        "F_SETOWN",
        "F_SETOWN_EX",
        "F_SETSIG",
        "FIOSETOWN",
        "SIOCSPGRP",
        "TIOCSTI",
        "TIOCLINUX",
        "TIOCSPGRP",
        "TIOCSIG",
        "setpriority-group",
        "setpriority-user",
        "ioprio_set-group",
        "ioprio_set-user",
    ];
    let actions = (own
        .iter()
        .chain(&refused)
        .map(|call| format!("refused:{call}")))
    .chain(own.iter().map(|call| format!("allowed:{call}")));
    for action in actions {
        let output = self_test(&action).await;
        assert!(
            output.status.success(),
            "{action} {:?}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[tokio::test]
async fn a_registered_tool_set_serves_later_execs_and_an_unknown_one_is_refused() {
    let mut host = Host::ready().await;
    host.open_session(1, SessionId(1)).await;
    let set = ToolSetId::of(&tools());
    host.request(
        2,
        Request::RegisterTools {
            tool_set: set,
            tools: code_mode_wire::convert::tools_to_wire(&tools()),
        },
    )
    .await;
    assert_eq!(host.response(2).await, Ok(Response::ToolsRegistered));
    // Two execs name the set; their cells see its tools (and only it carries them).
    for (id, cell) in [(3, "1"), (4, "2")] {
        host.request(
            id,
            Request::SessionWithTools {
                session: SessionId(1),
                tool_set: set,
                call: SessionCall::Execute(ExecRequest::new(
                    "text(ALL_TOOLS.map((tool) => tool.name).join(','))",
                ))
                .into(),
            },
        )
        .await;
        let Ok(Response::Reply(reply)) = host.response(id).await else {
            panic!("exec {id} did not start");
        };
        let SessionReply::Started(started) = reply.into() else {
            panic!("exec {id} did not start");
        };
        assert_eq!(
            started.initial_response,
            CellResponse::Result {
                cell_id: cell.into(),
                content_items: vec![ContentItem::text("echo,block")],
                failure: None,
                wall_time: std::time::Duration::ZERO,
            }
        );
    }
    // A set the runtime never saw is refused, and the connection goes on.
    let unknown = ToolSetId(set.0 ^ 1);
    host.request(
        5,
        Request::SessionWithTools {
            session: SessionId(1),
            tool_set: unknown,
            call: SessionCall::Execute(ExecRequest::new("text(1)")).into(),
        },
    )
    .await;
    assert_eq!(
        host.response(5).await,
        Err(WireError::UnknownToolSet(unknown))
    );
    host.request(
        6,
        Request::Session {
            session: SessionId(1),
            call: SessionCall::Execute(ExecRequest::new("text(2)")).into(),
        },
    )
    .await;
    assert!(matches!(
        host.response(6).await,
        Ok(Response::Reply(payload::SessionReply::Started { .. }))
    ));
}

/// A response with the times it carries set to zero.
fn timeless(response: Response) -> Response {
    match response {
        Response::Reply(reply) => {
            let reply = match SessionReply::from(reply) {
                SessionReply::Started(started) => SessionReply::Started(StartedCell {
                    initial_response: started.initial_response.timeless(),
                    ..started
                }),
                SessionReply::Cell(response) => SessionReply::Cell(response.timeless()),
                SessionReply::Pending(outcome) => SessionReply::Pending(outcome.timeless()),
                SessionReply::StartedPending(started) => {
                    SessionReply::StartedPending(StartedPendingCell {
                        outcome: started.outcome.timeless(),
                        ..started
                    })
                }
                other => other,
            };
            Response::Reply(reply.into())
        }
        other => other,
    }
}

/// The spans of a traced cell that runs on come back while it runs, not only when its
/// request ends: its compile and evaluation arrive before its response, in a batch
/// without the request's own span, which comes at the end.
#[tokio::test]
async fn a_long_cells_spans_come_back_before_it_ends() {
    let mut host = Host::ready().await;
    host.open_session(1, SessionId(1)).await;
    // Long enough that a flush due 20 ms in comes first even on a loaded machine.
    let source = "await new Promise((done) => setTimeout(done, 1500)); text(\"late\");";
    host.traced_exec(2, source, [9; 16], [3; 8]).await;
    let ServerMessage::Spans(first) = host
        .next_matching(|m| matches!(m, ServerMessage::Spans(_)))
        .await
    else {
        unreachable!("matched spans");
    };
    let names: Vec<&str> = first.iter().map(|record| record.name.as_str()).collect();
    assert!(
        names.contains(&"code_mode.compile") && !names.contains(&"code_mode.runtime"),
        "the first batch is not the running cell's: {names:?}"
    );
    assert!(
        !host
            .backlog
            .iter()
            .any(|m| matches!(m, ServerMessage::Response { .. })),
        "the spans came only once the cell had ended"
    );
    host.response(2).await.expect("the cell's response");
    loop {
        let ServerMessage::Spans(batch) = host
            .next_matching(|m| matches!(m, ServerMessage::Spans(_)))
            .await
        else {
            unreachable!("matched spans");
        };
        if batch
            .iter()
            .any(|record| record.name == "code_mode.runtime")
        {
            break;
        }
    }
}

/// A traced exec's spans come back as the runtime's own records: each under the host's
/// span it was traced under, with its fields as attributes (one recorded later included),
/// the runtime process's pid, the cell's timer as an event of `code_mode.runtime`, and
/// the times the work ran at (the evaluation's spans are made once the cell is idle).
#[tokio::test]
async fn a_traced_execs_spans_come_back_with_their_attributes_and_events() {
    use code_mode_wire::payload::{SpanRecord, SpanValue};
    let mut host = Host::ready().await;
    host.open_session(1, SessionId(1)).await;
    let (trace_id, host_span) = ([7; 16], [8; 8]);
    // Type annotations make V8 refuse the source: the compile span records `typescript`.
    // Its evaluation takes 40 ms before the cell waits.
    let source = "const pause = (ms: number) => new Promise<void>((done) => setTimeout(done, ms));\nconst until = Date.now() + 40;\nwhile (Date.now() < until) {}\nawait pause(1);\ntext(\"ok\");";
    // The runtime makes a request's span ahead, while idle; it starts when taken.
    let sent = unix_nanos_now();
    host.traced_exec(2, source, trace_id, host_span).await;
    host.response(2).await.expect("the cell's response");
    let mut records: Vec<SpanRecord> = Vec::new();
    while !records
        .iter()
        .any(|record| record.name == "code_mode.runtime")
    {
        match host
            .next_matching(|m| matches!(m, ServerMessage::Spans(_)))
            .await
        {
            ServerMessage::Spans(batch) => records.extend(batch),
            _ => unreachable!("matched spans"),
        }
    }
    let pid = i64::from(host.child.id().expect("the runtime runs"));
    let named = |name: &str| {
        records
            .iter()
            .find(|record| record.name == name)
            .unwrap_or_else(|| panic!("no {name} among {records:#?}"))
    };
    let attribute = |record: &SpanRecord, key: &str| {
        record
            .attributes
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.clone())
    };
    for record in &records {
        assert_eq!(record.trace_id, trace_id, "{record:?}");
        assert_eq!(record.parent_span_id, host_span, "{record:?}");
        assert_ne!(record.span_id, [0; 8], "{record:?}");
        assert!(
            record.end_unix_nanos >= record.start_unix_nanos,
            "{record:?}"
        );
        assert_eq!(attribute(record, "process.pid"), Some(SpanValue::I64(pid)));
        // Every name the runtime's spans use is in the wire's `KNOWN_NAMES`, which repeats
        // them: the host decodes each without allocating.
        let keys = |attributes: &[(code_mode_wire::payload::Name, SpanValue)]| {
            attributes
                .iter()
                .map(|(key, _)| key.clone())
                .collect::<Vec<_>>()
        };
        let mut names = vec![record.name.clone()];
        names.extend(keys(&record.attributes));
        for event in &record.events {
            names.push(event.name.clone());
            names.extend(keys(&event.attributes));
        }
        for name in names {
            assert!(
                matches!(name.clone().into_cow(), std::borrow::Cow::Borrowed(_)),
                "{name} is missing from code_mode_wire::payload::KNOWN_NAMES"
            );
        }
    }
    let mut ids: Vec<_> = records.iter().map(|record| record.span_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), records.len(), "span ids are unique");
    let compile = named("code_mode.compile");
    assert_eq!(
        attribute(compile, "typescript"),
        Some(SpanValue::Bool(true))
    );
    assert_eq!(
        attribute(compile, "source.bytes"),
        Some(SpanValue::I64(source.len() as i64))
    );
    let evaluate = named("code_mode.evaluate");
    let took = |record: &SpanRecord| record.end_unix_nanos - record.start_unix_nanos;
    assert!(
        took(evaluate) >= 35_000_000,
        "the evaluation's span does not hold its time: {evaluate:?}"
    );
    assert!(
        compile.end_unix_nanos <= evaluate.start_unix_nanos,
        "{compile:?} {evaluate:?}"
    );
    let runtime = named("code_mode.runtime");
    assert!(
        sent <= runtime.start_unix_nanos
            && runtime.start_unix_nanos <= compile.start_unix_nanos
            && evaluate.end_unix_nanos <= runtime.end_unix_nanos,
        "sent at {sent}: {runtime:?}"
    );
    assert_eq!(
        attribute(runtime, "runtime.session"),
        Some(SpanValue::Text("1".into()))
    );
    assert!(
        matches!(attribute(runtime, "cpu.time_ms"), Some(SpanValue::F64(ms)) if ms > 0.0),
        "{runtime:?}"
    );
    let fired: Vec<_> = runtime
        .events
        .iter()
        .filter(|event| event.name == "timer fired")
        .collect();
    assert_eq!(fired.len(), 1, "{runtime:?}");
    assert!(
        matches!(fired[0].attributes[..], [(ref key, SpanValue::I64(_))] if key == "timer.id"),
        "{:?}",
        fired[0]
    );

    // The next traced exec takes the span made ahead while the first one's cell ran.
    let (trace_id, host_span) = ([9; 16], [10; 8]);
    let sent = unix_nanos_now();
    host.traced_exec(3, "text(\"again\")", trace_id, host_span)
        .await;
    host.response(3).await.expect("the second cell's response");
    let runtime = loop {
        let ServerMessage::Spans(batch) = host
            .next_matching(|m| matches!(m, ServerMessage::Spans(_)))
            .await
        else {
            unreachable!("matched spans")
        };
        if let Some(runtime) = batch
            .into_iter()
            .find(|record| record.name == "code_mode.runtime" && record.trace_id == trace_id)
        {
            break runtime;
        }
    };
    assert_eq!(runtime.parent_span_id, host_span, "{runtime:?}");
    assert!(
        sent <= runtime.start_unix_nanos,
        "sent at {sent}: {runtime:?}"
    );
    assert_eq!(
        attribute(&runtime, "runtime.session"),
        Some(SpanValue::Text("1".into()))
    );
}

/// Now as nanoseconds since the Unix epoch, as span records give times.
fn unix_nanos_now() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970");
    u64::try_from(since.as_nanos()).expect("nanoseconds fit")
}

/// A cell rebuilt as one that committed already (`Resume` with `committed`) replays to its
/// final answer and merges nothing: no `Committed` comes for it, where the same journal
/// resumed as uncommitted merges its write again.
#[tokio::test]
async fn a_cell_resumed_after_its_commit_merges_nothing_again() {
    use code_mode_protocol::journal::CellJournal;
    let mut host = Host::ready().await;
    host.open_session(1, SessionId(1)).await;
    let journal = CellJournal::start(
        "store('k', 2); text('again');".to_owned(),
        std::sync::Arc::from([]),
        std::sync::Arc::new(Default::default()),
        7,
    );
    for (id, committed) in [(2u64, true), (4, false)] {
        host.request(
            id,
            Request::Resume {
                session: SessionId(1),
                journal: journal.clone().into(),
                exec_call_id: None,
                committed,
            },
        )
        .await;
        let Ok(Response::Resumed(cell_id)) = host.response(id).await else {
            panic!("the cell was not resumed");
        };
        // The cell finishes with nobody observing it and offers its final answer, which
        // the host gives back: the wait then gets it from the runtime.
        tokio::time::sleep(Duration::from_millis(200)).await;
        host.request(
            id + 1,
            Request::Session {
                session: SessionId(1),
                call: SessionCall::Wait(WaitRequest::new(cell_id.clone())).into(),
            },
        )
        .await;
        let response = host.response(id + 1).await.expect("the wait");
        let Response::Reply(code_mode_wire::payload::SessionReply::Cell(
            code_mode_wire::payload::CellResponse::Result { content_items, .. },
        )) = response
        else {
            panic!("not a final answer: {response:?}");
        };
        assert_eq!(content_items.len(), 1, "committed {committed}");
        let commits = host
            .backlog
            .iter()
            .filter(|message| {
                matches!(message, ServerMessage::Committed { cell_id: of, .. } if *of == cell_id)
            })
            .count();
        assert_eq!(commits, usize::from(!committed), "committed {committed}");
    }
}

/// The build linked with `startup-order.txt` (see `link.rs`): the functions it lists
/// follow one another in the executable in the listed order: nearly every listed function
/// lies after the one listed before it (by chance, half of them would). A list whose names
/// the build lacks fails too, and so does a build that did not place them (it says why):
/// built only for the target the placement is made for, x86_64 Linux with glibc.
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
#[test]
fn the_functions_a_cold_start_runs_are_placed_together() {
    let ordered = env!("CODE_MODE_STARTUP_ORDERED");
    assert_eq!(
        ordered, "1",
        "{BIN} was not linked with the startup order ({ordered}), so its placement cannot be \
         checked: build with rustc's own lld (Rust 1.90 or later, no linker named) and \
         without CODE_MODE_STARTUP_ORDER=0"
    );
    let symbols = std::process::Command::new("nm")
        .args(["--defined-only", BIN])
        .output()
        .expect("run nm (binutils, which the build's C compiler comes with)");
    assert!(symbols.status.success(), "nm failed on {BIN}");
    let addresses: std::collections::HashMap<String, u64> =
        String::from_utf8_lossy(&symbols.stdout)
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let address = u64::from_str_radix(fields.next()?, 16).ok()?;
                let kind = fields.next()?;
                let name = fields.next()?;
                matches!(kind, "T" | "t").then(|| (name.to_owned(), address))
            })
            .collect();
    let order = include_str!("../../startup-order.txt");
    let placed: Vec<u64> = order
        .lines()
        .filter_map(|name| addresses.get(name).copied())
        .collect();
    assert!(
        placed.len() >= 500,
        "only {} of the listed functions are in {BIN}: run scripts/startup-order.py",
        placed.len()
    );
    let ascending = placed.windows(2).filter(|pair| pair[0] < pair[1]).count();
    let share = ascending as f64 / (placed.len() - 1) as f64;
    assert!(
        share > 0.9,
        "{ascending} of {} listed functions follow the one listed before them",
        placed.len() - 1
    );
}

/// The runtime's first cell thread starts before the process's sandbox, so that its isolate
/// is made meanwhile; it must restrict itself. Run on that thread once the process is
/// sandboxed, as a cell would be: a file cannot be read, and exec kills the process.
#[tokio::test]
async fn the_first_cell_thread_started_before_the_sandbox_is_restricted() {
    let read = refuses_a_read_and_kills_on_exec("first-cell:").await;
    assert!(
        read.contains("first cell thread: landlock as the process: true"),
        "{read}"
    );
}
