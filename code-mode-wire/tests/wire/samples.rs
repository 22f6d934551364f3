//! One sample of every message variant.

use code_mode_internal::{SessionCall, SessionReply};
use code_mode_protocol::{
    CallId, CellResponse, ContentItem, ExecRequest, ImageDetail, PendingOutcome, SessionOptions,
    StartedCell, StartedPendingCell, ToolDefinition, ToolKind, WaitRequest,
};
use code_mode_wire::*;

pub fn execute_request() -> ClientMessage {
    ClientMessage::Request {
        id: RequestId(1),
        request: Request::Session {
            session: SessionId(1),
            call: SessionCall::Execute(
                ExecRequest::new(r#"text("hi")"#)
                    .with_tools(vec![ToolDefinition::new("echo", "e", ToolKind::Function)])
                    .with_yield_time_ms(10_000),
            )
            .into(),
        },
        trace: None,
    }
}

fn items() -> Vec<ContentItem> {
    vec![
        ContentItem::text("hello"),
        ContentItem::InputImage {
            image_url: "data:image/png;base64,AA==".into(),
            detail: ImageDetail::Original,
        },
        ContentItem::InputAudio {
            audio_url: "data:audio/mpeg;base64,SUQz".into(),
        },
    ]
}

pub fn client_messages() -> Vec<ClientMessage> {
    let session = SessionId(4);
    let requests = vec![
        Request::OpenSession {
            options: SessionOptions {
                max_yield_time_ms: Some(0),
                ..SessionOptions::default()
            }
            .into(),
            stored_values: Default::default(),
        },
        Request::Session {
            session,
            call: SessionCall::Execute(ExecRequest::new("await tools.x()")).into(),
        },
        Request::Session {
            session,
            call: SessionCall::Wait(WaitRequest::new("3").with_yield_time_ms(5)).into(),
        },
        Request::Session {
            session,
            call: SessionCall::Terminate {
                cell_id: "3".into(),
            }
            .into(),
        },
        Request::Session {
            session,
            call: SessionCall::ExecuteToPending(ExecRequest::new("1")).into(),
        },
        Request::Session {
            session,
            call: SessionCall::WaitToPending {
                cell_id: "3".into(),
            }
            .into(),
        },
        Request::Session {
            session,
            call: SessionCall::Interrupt.into(),
        },
        Request::RegisterTools {
            tool_set: ToolSetId(0xfeed),
            tools: code_mode_wire::convert::tools_to_wire(&[ToolDefinition::new(
                "far",
                "f",
                ToolKind::Function,
            )
            .with_deferred(true)]),
        },
        Request::SessionWithTools {
            session,
            tool_set: ToolSetId(0xfeed),
            call: SessionCall::Execute(ExecRequest::new("await tools.far()")).into(),
        },
        Request::Resume {
            session,
            journal: sample_journal().into(),
            exec_call_id: Some("call_7".into()),
            committed: true,
        },
        Request::Answer {
            session,
            cell_id: "2".into(),
            call: payload::CallId(3),
            result: Err("late".into()),
        },
        Request::Session {
            session,
            call: SessionCall::Shutdown.into(),
        },
    ];
    let mut messages = vec![ClientMessage::Hello(ClientHello::current("test"))];
    messages.extend(requests.into_iter().enumerate().map(|(index, request)| {
        ClientMessage::Request {
            id: RequestId(index as u64),
            request,
            // Every other request traced, with the flags of a sampled and an unsampled one.
            trace: (index % 2 == 1).then_some(payload::TraceContext {
                trace_id: [0xab; 16],
                span_id: [7; 8],
                flags: (index % 4 == 1) as u8,
            }),
        }
    }));
    messages.push(execute_request());
    messages.push(ClientMessage::CancelRequest { id: RequestId(9) });
    messages.push(ClientMessage::Preempt { id: RequestId(10) });
    for reply in [
        DelegateReply::ToolResult(Ok(r#"{"a":[1,2]}"#.into())),
        DelegateReply::ToolResult(Err("nope".into())),
        DelegateReply::Notified,
        DelegateReply::Cancelled,
    ] {
        messages.push(ClientMessage::DelegateReply {
            id: DelegateId(u64::MAX),
            reply,
        });
    }
    messages.extend([
        ClientMessage::Ping(1),
        ClientMessage::Pong(u64::MAX),
        ClientMessage::Taken { id: RequestId(11) },
        ClientMessage::GivenBack { id: RequestId(12) },
        ClientMessage::OfferTaken {
            session: SessionId(2),
            cell_id: "5".into(),
        },
        ClientMessage::OfferGivenBack {
            session: SessionId(2),
            cell_id: "g3:6".into(),
        },
    ]);
    messages
}

pub fn server_messages() -> Vec<ServerMessage> {
    let responses = vec![
        Response::SessionOpened(SessionId(1)),
        Response::Reply(
            SessionReply::Started(StartedCell {
                cell_id: "1".into(),
                initial_response: CellResponse::Yielded {
                    cell_id: "1".into(),
                    content_items: items(),
                    wall_time: std::time::Duration::ZERO,
                },
            })
            .into(),
        ),
        Response::Reply(
            SessionReply::Cell(CellResponse::Result {
                cell_id: "1".into(),
                content_items: items(),
                failure: Some(code_mode_protocol::CellFailure::new(
                    code_mode_protocol::FailureKind::ScriptError,
                    "Error: x",
                )),
                wall_time: std::time::Duration::ZERO,
            })
            .into(),
        ),
        Response::Reply(
            SessionReply::Cell(CellResponse::Terminated {
                cell_id: "1".into(),
                content_items: vec![],
                wall_time: std::time::Duration::ZERO,
            })
            .into(),
        ),
        Response::Reply(
            SessionReply::StartedPending(StartedPendingCell {
                cell_id: "2".into(),
                outcome: PendingOutcome::Pending {
                    cell_id: "2".into(),
                    content_items: items(),
                    pending_tool_call_ids: vec![CallId::new(1), CallId::new(2)],
                    wall_time: std::time::Duration::ZERO,
                },
            })
            .into(),
        ),
        Response::Reply(
            SessionReply::Pending(PendingOutcome::Completed(CellResponse::missing("9"))).into(),
        ),
        Response::Reply(SessionReply::Interrupted(vec!["2".into(), "5".into()]).into()),
        Response::Reply(SessionReply::ShutDown.into()),
        Response::ToolsRegistered,
        Response::Resumed("4".into()),
        Response::Answered(true),
    ];
    let errors = vec![
        WireError::MissingSession(SessionId(3)),
        WireError::ShuttingDown,
        WireError::BusyObserver("1".into()),
        WireError::AlreadyTerminating("1".into()),
        WireError::Cancelled,
        WireError::ResponseTooLarge { bytes: 1, max: 2 },
        WireError::Internal("boom".into()),
        WireError::RuntimeLost("killed".into()),
        WireError::Draining,
        WireError::TooManySessions { max: 1024 },
        WireError::UnknownToolSet(ToolSetId(7)),
    ];
    let mut messages = vec![
        ServerMessage::Ready(Ready {
            version: 1,
            capabilities: vec!["sessions".into()],
            server: "s".into(),
            sandbox: "seccomp".into(),
        }),
        ServerMessage::Rejected(HandshakeRejection::NoCommonVersion {
            client: vec![2],
            server: vec![1],
        }),
        ServerMessage::Rejected(HandshakeRejection::MissingCapability("x".into())),
        ServerMessage::Rejected(HandshakeRejection::InvalidHello("y".into())),
    ];
    messages.extend(
        responses
            .into_iter()
            .map(|response| ServerMessage::Response {
                id: RequestId(5),
                result: Ok(response),
            }),
    );
    messages.extend(errors.into_iter().map(|error| ServerMessage::Response {
        id: RequestId(6),
        result: Err(error),
    }));
    messages.extend([
        ServerMessage::Delegate {
            id: DelegateId(1),
            session: SessionId(1),
            call: DelegateCall::InvokeTool {
                cell_id: "1".into(),
                call_id: payload::CallId(1),
                tool_name: "mcp__x__y".into(),
                kind: ToolKind::Freeform.into(),
                input: Some(r#""raw""#.into()),
                exec_call_id: Some("call_1".into()),
            },
        },
        ServerMessage::Delegate {
            id: DelegateId(2),
            session: SessionId(1),
            call: DelegateCall::Notify {
                cell_id: "1".into(),
                text: "working".into(),
            },
        },
        ServerMessage::CancelDelegate { id: DelegateId(2) },
        ServerMessage::Admitted {
            id: RequestId(3),
            cell_id: "4".into(),
        },
        ServerMessage::CellClosed {
            session: SessionId(1),
            cell_id: "1".into(),
        },
        ServerMessage::Ping(7),
        ServerMessage::Pong(0),
        ServerMessage::Draining,
        ServerMessage::Committed {
            session: SessionId(1),
            cell_id: "4".into(),
            writes: [(
                "k".to_owned(),
                std::sync::Arc::from(r#"{"a":[1,"\u00e9"]}"#),
            )]
            .into_iter()
            .collect(),
        },
    ]);
    messages.extend(
        journal_entries()
            .into_iter()
            .map(|entry| ServerMessage::Journal {
                session: SessionId(1),
                cell_id: "4".into(),
                entry: entry.into(),
            }),
    );
    messages.push(ServerMessage::Spans(vec![
        payload::SpanRecord {
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: 1_700_000_000_000_500_000,
            attributes: vec![
                ("typescript".into(), payload::SpanValue::Bool(false)),
                ("source.bytes".into(), payload::SpanValue::I64(-1)),
                ("ratio".into(), payload::SpanValue::F64(0.5)),
                ("cell.id".into(), payload::SpanValue::Text("\u{e9}".into())),
            ],
            events: vec![payload::SpanEvent {
                name: "timer fired".into(),
                unix_nanos: 1_700_000_000_000_100_000,
                attributes: vec![("timer.id".into(), payload::SpanValue::I64(4))],
            }],
            status: payload::SpanStatus::Error("boom".into()),
            ..span_record("code_mode.compile", vec![])
        },
        payload::SpanRecord {
            trace_id: [1; 16],
            span_id: [3; 8],
            parent_span_id: [9; 8],
            name: "code_mode.runtime".into(),
            start_unix_nanos: 0,
            end_unix_nanos: u64::MAX,
            attributes: vec![],
            events: vec![],
            status: payload::SpanStatus::Ok,
        },
    ]));
    messages.push(ServerMessage::Spans(vec![payload::SpanRecord {
        trace_id: [0; 16],
        span_id: [0; 8],
        parent_span_id: [0; 8],
        name: String::new().into(),
        start_unix_nanos: 0,
        end_unix_nanos: 0,
        attributes: vec![],
        events: vec![],
        status: payload::SpanStatus::Unset,
    }]));
    messages.push(ServerMessage::Offer {
        session: SessionId(3),
        cell_id: "7".into(),
        response: CellResponse::result(
            code_mode_protocol::CellId::from("7"),
            vec![ContentItem::text("rest")],
            None,
        )
        .into(),
    });
    messages
}

/// A journal with one of everything.
pub fn sample_journal() -> code_mode_protocol::journal::CellJournal {
    use code_mode_protocol::journal::{CellJournal, JournalCommand};
    let mut stored = code_mode_protocol::StoredValues::new();
    stored.insert("k".into(), std::sync::Arc::from("[1]"));
    let mut journal = CellJournal::start(
        "await tools.x()".into(),
        std::sync::Arc::from([ToolDefinition::new("x", "d", ToolKind::Function)]),
        std::sync::Arc::new(stored),
        42,
    );
    journal.clock = vec![1, 2];
    journal.issued = vec![(7, "x".into())];
    journal.entered = vec![
        JournalCommand::ToolResult {
            call: CallId::new(1),
            result: Ok("{}".into()),
        },
        JournalCommand::TimerFired { id: 3 },
    ];
    journal.outputs = 1;
    journal.notifications = 2;
    journal.yields = 3;
    journal
}

/// One journal entry of each kind.
pub fn journal_entries() -> Vec<code_mode_protocol::journal::JournalEntry> {
    use code_mode_protocol::journal::{JournalCommand, JournalEntry};
    vec![
        JournalEntry::Started { seed: 9 },
        JournalEntry::Clock(vec![5]),
        JournalEntry::Issued {
            call: CallId::new(4),
            hash: 11,
            tool: "x".into(),
        },
        JournalEntry::Entered {
            index: 0,
            command: JournalCommand::TimerFired { id: 1 },
        },
        JournalEntry::Entered {
            index: 7,
            command: JournalCommand::ToolResult {
                call: CallId::new(2),
                result: Err("no".into()),
            },
        },
        JournalEntry::Yielded,
        JournalEntry::NotDurable,
    ]
}

/// A handed-back span named `name` with `attributes`: trace id 1s, span id 2s, parent 3s,
/// times 1 and 2, no events, status unset.
pub fn span_record(
    name: impl Into<payload::Name>,
    attributes: Vec<(payload::Name, payload::SpanValue)>,
) -> payload::SpanRecord {
    payload::SpanRecord {
        trace_id: [1; 16],
        span_id: [2; 8],
        parent_span_id: [3; 8],
        name: name.into(),
        start_unix_nanos: 1,
        end_unix_nanos: 2,
        attributes,
        events: vec![],
        status: payload::SpanStatus::Unset,
    }
}
