//! The wire format: round trips, framing limits, garbage, handshake, pinned bytes.

use bytes::{BufMut, BytesMut};
use code_mode_wire::codec::{decode_body, encode_frame};
use code_mode_wire::handshake::ServerOffer;
use code_mode_wire::*;
use tokio_util::codec::Decoder;

fn frame<T: serde::Serialize>(message: &T) -> BytesMut {
    let mut buffer = BytesMut::new();
    encode_frame(message, &mut buffer).expect("encodable");
    buffer
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[test]
fn every_client_message_round_trips() {
    let mut codec = FrameCodec::<ClientMessage, ClientMessage>::new();
    let messages = crate::samples::client_messages();
    let mut buffer = BytesMut::new();
    for message in &messages {
        encode_frame(message, &mut buffer).unwrap();
    }
    for message in &messages {
        assert_eq!(codec.decode(&mut buffer).unwrap().as_ref(), Some(message));
    }
    assert!(buffer.is_empty());
    assert_eq!(codec.decode_eof(&mut buffer).unwrap(), None);
}

#[test]
fn every_server_message_round_trips() {
    let mut codec = FrameCodec::<ServerMessage, ServerMessage>::new();
    for message in crate::samples::server_messages() {
        let mut buffer = frame(&message);
        assert_eq!(codec.decode(&mut buffer).unwrap(), Some(message));
        assert!(buffer.is_empty());
    }
}

/// Every payload of the samples reads back into the API and converts to the same wire
/// form: the conversions lose nothing and invent nothing.
#[test]
fn every_payload_converts_to_the_api_and_back_unchanged() {
    use code_mode_protocol as api;
    fn both_ways<A, W>(wire: &W)
    where
        W: Clone + PartialEq + std::fmt::Debug + From<A>,
        A: From<W>,
    {
        let api = A::from(wire.clone());
        assert_eq!(&W::from(api), wire);
    }
    let mut seen = 0;
    for message in crate::samples::client_messages() {
        let ClientMessage::Request { request, .. } = message else {
            continue;
        };
        match request {
            Request::OpenSession { options, .. } => both_ways::<api::SessionOptions, _>(&options),
            Request::Session { call, .. } | Request::SessionWithTools { call, .. } => {
                both_ways::<code_mode_internal::SessionCall, _>(&call)
            }
            Request::RegisterTools { tools, .. } => {
                let api = code_mode_wire::convert::tools_from_wire(tools.clone());
                assert_eq!(code_mode_wire::convert::tools_to_wire(&api), tools);
            }
            Request::Resume { journal, .. } => {
                both_ways::<api::journal::CellJournal, _>(&journal);
                assert_eq!(
                    api::journal::CellJournal::from(journal),
                    crate::samples::sample_journal()
                );
            }
            Request::Answer { .. } => {}
        }
        seen += 1;
    }
    for entry in crate::samples::journal_entries() {
        let wire = payload::JournalEntry::from(entry.clone());
        assert_eq!(api::journal::JournalEntry::from(wire), entry);
    }
    for message in crate::samples::server_messages() {
        if let ServerMessage::Response {
            result: Ok(Response::Reply(reply)),
            ..
        } = message
        {
            both_ways::<code_mode_internal::SessionReply, _>(&reply);
            seen += 1;
        }
    }
    assert_eq!(seen, 20, "every sample request and reply converts");

    // Options with every field away from its default come back whole.
    let options = api::SessionOptions {
        max_yield_time_ms: Some(7),
        limits: api::CellLimits {
            heap_bytes: 1,
            cpu_budget_ms: 2,
            output_bytes: 3,
            max_in_flight_tool_calls: 4,
            max_tool_payload_bytes: 5,
        },
        reuse_isolates: false,
        max_stored_bytes: 6,
        surface: api::Surface::Codex,
        hibernate_after_ms: Some(8),
    };
    let wire = payload::SessionOptions::from(options.clone());
    assert_eq!(api::SessionOptions::from(wire), options);
}

#[test]
fn the_server_samples_have_one_of_every_variant() {
    // `kind`'s match is exhaustive: a new variant cannot be added without a kind, nor
    // (through `KINDS`) without a sample.
    let sampled: std::collections::BTreeSet<&str> = crate::samples::server_messages()
        .iter()
        .map(ServerMessage::kind)
        .collect();
    let all: std::collections::BTreeSet<&str> = ServerMessage::KINDS.into_iter().collect();
    assert_eq!(sampled, all);
}

#[test]
fn frames_arriving_byte_by_byte_decode_once_complete() {
    let mut codec = FrameCodec::<ServerMessage, ServerMessage>::new();
    let message = crate::samples::server_messages().remove(2);
    let whole = frame(&message);
    let mut buffer = BytesMut::new();
    for (index, byte) in whole.iter().enumerate() {
        buffer.put_u8(*byte);
        let decoded = codec.decode(&mut buffer).unwrap();
        if index + 1 < whole.len() {
            assert_eq!(decoded, None);
        } else {
            assert_eq!(decoded, Some(message.clone()));
        }
    }
}

#[test]
fn an_oversized_length_is_refused_before_allocating() {
    let mut codec = FrameCodec::<ClientMessage, ClientMessage>::new();
    for length in [MAX_FRAME_BYTES as u32 + 1, u32::MAX] {
        let mut buffer = BytesMut::with_capacity(16);
        buffer.put_u32_le(length);
        buffer.put_slice(b"abc");
        let error = codec.decode(&mut buffer).unwrap_err();
        assert!(matches!(error, FrameError::TooLarge { bytes } if bytes == u64::from(length)));
        assert!(
            buffer.capacity() < 1024,
            "capacity grew to {}",
            buffer.capacity()
        );
    }
    // Exactly the maximum is accepted as a length (and waits for its body), without
    // reserving room for all of it before the bytes arrive.
    let mut buffer = BytesMut::new();
    buffer.put_u32_le(MAX_FRAME_BYTES as u32);
    assert!(codec.decode(&mut buffer).unwrap().is_none());
    assert!(
        buffer.capacity() <= 128 * 1024,
        "reserved {}",
        buffer.capacity()
    );
}

#[test]
fn truncated_frames_are_errors_at_eof_and_a_clean_eof_is_the_end() {
    let mut codec = FrameCodec::<ClientMessage, ClientMessage>::new();
    let whole = frame(&crate::samples::client_messages()[0]);
    for cut in [1, 3, 4, whole.len() - 1] {
        let mut buffer = BytesMut::from(&whole[..cut]);
        assert!(codec.decode(&mut buffer).unwrap().is_none());
        let error = codec.decode_eof(&mut buffer).unwrap_err();
        assert!(
            matches!(error, FrameError::Truncated { buffered } if buffered == cut),
            "{error}"
        );
    }
    let mut empty = BytesMut::new();
    assert_eq!(codec.decode_eof(&mut empty).unwrap(), None);
}

#[test]
fn bodies_with_trailing_bytes_or_garbage_are_refused() {
    let whole = frame(&ClientMessage::CancelRequest { id: RequestId(7) });
    let mut body = whole[4..].to_vec();
    body.push(0);
    assert!(matches!(
        decode_body::<ClientMessage>(&body),
        Err(FrameError::TrailingBytes { extra: 1 })
    ));
    assert!(matches!(
        decode_body::<ClientMessage>(&[0xff, 0xff, 0xff]),
        Err(FrameError::Decode(_))
    ));
}

#[test]
fn a_message_too_large_for_a_frame_is_refused_and_leaves_the_buffer_intact() {
    let huge = ServerMessage::CellClosed {
        session: SessionId(1),
        cell_id: "x".repeat(MAX_FRAME_BYTES + 1).into(),
    };
    let mut buffer = BytesMut::from(&b"kept"[..]);
    assert!(matches!(
        encode_frame(&huge, &mut buffer),
        Err(FrameError::TooLarge { .. })
    ));
    assert_eq!(&buffer[..], b"kept");
}

#[test]
fn random_and_mutated_frames_never_panic() {
    let mut generator = crate::fuzz_harness::InputGenerator::new(
        0x9e37_79b9_7f4a_7c15,
        &crate::samples::client_messages(),
        &crate::samples::server_messages(),
    );
    for _ in 0..300_000 {
        crate::fuzz_harness::exercise_decoders(&generator.input());
    }
}

#[test]
fn the_handshake_picks_the_highest_common_version() {
    let offer = ServerOffer {
        versions: vec![1, 2, 3],
        capabilities: vec!["sessions".into(), "pending-frontier".into()],
        server: "test-server".into(),
        sandbox: "none".into(),
    };
    let hello = ClientHello {
        versions: vec![0, 2, 3, 9],
        required_capabilities: vec!["sessions".into()],
        optional_capabilities: vec!["unknown-extra".into()],
        client: "test-client".into(),
    };
    let ready = offer.negotiate(&hello).unwrap();
    assert_eq!(ready.version, 3);
    assert_eq!(ready.capabilities, ["sessions", "pending-frontier"]);
    assert_eq!(ready.to_string(), "test-server (protocol 3; sandbox: none)");
    // A client of this build and a server of this build agree.
    let ready = ServerOffer::current("bin", "none")
        .negotiate(&ClientHello::current("host"))
        .unwrap();
    assert_eq!(ready.version, PROTOCOL_VERSION);
}

#[test]
fn the_handshake_refuses_with_a_reason_for_each_failure() {
    let offer = ServerOffer::current("code-mode-bin 0.1.0", "none");
    let mut hello = ClientHello::current("host");
    // A peer of the version before (no failure kinds) and one from the future.
    hello.versions = vec![PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1];
    let rejection = offer.negotiate(&hello).unwrap_err();
    assert_eq!(
        rejection,
        HandshakeRejection::NoCommonVersion {
            client: vec![PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1],
            server: vec![PROTOCOL_VERSION]
        }
    );
    assert_eq!(
        rejection.to_string(),
        format!(
            "no common protocol version: the client speaks [{}, {}], the runtime speaks [{PROTOCOL_VERSION}]",
            PROTOCOL_VERSION - 1,
            PROTOCOL_VERSION + 1
        )
    );

    let mut hello = ClientHello::current("host");
    hello.required_capabilities.push("time-travel".into());
    let rejection = offer.negotiate(&hello).unwrap_err();
    assert_eq!(
        rejection,
        HandshakeRejection::MissingCapability("time-travel".into())
    );
    assert_eq!(
        rejection.to_string(),
        "the runtime lacks the required capability `time-travel`"
    );

    let mut hello = ClientHello::current("host");
    hello.versions.clear();
    assert_eq!(
        offer.negotiate(&hello).unwrap_err().to_string(),
        "invalid hello: it lists no protocol version"
    );
}

#[test]
fn the_client_checks_the_servers_answer_by_the_same_rules() {
    let hello = ClientHello::current("host");
    let ready = ServerOffer::current("bin", "none")
        .negotiate(&hello)
        .unwrap();
    assert_eq!(hello.accept(&ready), Ok(()));

    let mut other_version = ready.clone();
    other_version.version = 99;
    assert_eq!(
        hello.accept(&other_version).unwrap_err().to_string(),
        format!(
            "the runtime chose protocol version 99, which this host does not speak (it speaks [{PROTOCOL_VERSION}])"
        )
    );
    let mut fewer = ready;
    fewer
        .capabilities
        .retain(|capability| capability != "notifications");
    assert_eq!(
        hello.accept(&fewer),
        Err(ReadyMismatch::MissingCapability("notifications".into()))
    );
}

#[test]
fn every_session_error_round_trips_through_the_wire() {
    use code_mode_protocol::SessionError;
    for error in [
        SessionError::ShuttingDown,
        SessionError::BusyObserver("3".into()),
        SessionError::AlreadyTerminating("4".into()),
        SessionError::Runtime("no thread could be started".into()),
        SessionError::RuntimeLost("killed by signal 9".into()),
    ] {
        let text = error.to_string();
        let wire = WireError::from(error.clone());
        assert_eq!(wire.to_string(), text);
        // Through a real frame, as it travels.
        let mut buffer = BytesMut::new();
        let message = ServerMessage::Response {
            id: RequestId(1),
            result: Err(wire),
        };
        encode_frame(&message, &mut buffer).unwrap();
        let decoded: ServerMessage = FrameCodec::<ServerMessage, ClientMessage>::new()
            .decode(&mut buffer)
            .unwrap()
            .unwrap();
        let ServerMessage::Response {
            result: Err(wire), ..
        } = decoded
        else {
            panic!("decoded {decoded:?}");
        };
        let back = wire.into_session_error();
        assert_eq!(back, error);
        assert_eq!(back.to_string(), text, "the text is not repeated");
    }
    // Kinds only the wire produces read as a runtime failure naming them.
    assert_eq!(
        WireError::Cancelled.into_session_error().to_string(),
        "exec runtime failure: the request was cancelled"
    );
}

/// Pinned encodings: an accidental change to the wire format fails here. Update the
/// expected bytes only together with a protocol version bump.
#[test]
fn encodings_are_pinned() {
    let cases: Vec<(BytesMut, &str)> = vec![
        (
            frame(&ClientMessage::Hello(ClientHello {
                versions: vec![1],
                required_capabilities: vec!["sessions".into()],
                optional_capabilities: vec![],
                client: "h".into(),
            })),
            // length 16, Hello, versions [1], required ["sessions"], optional [], "h"
            "10000000000101010873657373696f6e73000168",
        ),
        (
            frame(&ClientMessage::CancelRequest { id: RequestId(300) }),
            // length 4, CancelRequest, varint 300 (0xfb marker, u16 little-endian)
            "0400000002fb2c01",
        ),
        (
            frame(&crate::samples::execute_request()),
            // length 32, Request 1: Session 1, call Execute: source, one function tool
            // (name, description, kind, not deferred), yield Some(10000), no tool call id;
            // no trace context
            "200000000101010100 0a74657874282268692229
             01046563686f01650000 01fb1027 00 00",
        ),
        (
            frame(&ServerMessage::Response {
                id: RequestId(5),
                result: Ok(Response::Reply(payload::SessionReply::Cell(
                    payload::CellResponse::Result {
                        cell_id: "1".into(),
                        content_items: vec![payload::ContentItem::InputText { text: "a".into() }],
                        failure: Some(payload::CellFailure {
                            kind: payload::FailureKind::CpuBudget,
                            text: "t".into(),
                        }),
                        wall_time: std::time::Duration::from_micros(3),
                    },
                ))),
            }),
            // length 20, Response 5, Ok, Reply, Cell, Result: "1", [text "a"], Some(CPU
            // budget, "t"), wall time 0 s 3000 ns (0xfb marker, u16 little-endian)
            "14000000 02 05 00 01 01 02 0131 01 00 0161 01 02 0174 00 fbb80b",
        ),
        (
            frame(&ServerMessage::CellClosed {
                session: SessionId(2),
                cell_id: "17".into(),
            }),
            // length 5, CellClosed, session 2, "17"
            "050000000502023137",
        ),
        (
            frame(&ServerMessage::Delegate {
                id: DelegateId(1),
                session: SessionId(2),
                call: DelegateCall::InvokeTool {
                    cell_id: "g2:1".into(),
                    call_id: payload::CallId(300),
                    tool_name: "t".into(),
                    kind: payload::ToolKind::Freeform,
                    input: Some("{}".into()),
                    exec_call_id: None,
                },
            }),
            // length 20, Delegate, id 1, session 2, InvokeTool: cell "g2:1", call 300 as a
            // number (0xfb marker, u16 little-endian; protocol 14), tool "t", Freeform,
            // Some("{}"), no exec call id
            "14000000 03 01 02 00 0467323a31 fb2c01 0174 01 01027b7d 00",
        ),
        (
            frame(&ServerMessage::Spans(vec![crate::samples::span_record(
                "code_mode.evaluate",
                vec![("typescript".into(), payload::SpanValue::Bool(true))],
            )])),
            PINNED_SPANS,
        ),
    ];
    for (encoded, expected) in cases {
        let expected: String = expected.split_whitespace().collect();
        assert_eq!(hex(&encoded), expected);
    }
}

/// A handed-back span's names decode as the static text of the runtime's own names, with
/// no allocation; any other name still decodes, owned.
#[test]
fn the_runtimes_own_span_names_decode_without_allocating() {
    use std::borrow::Cow;
    let mut record = crate::samples::span_record(
        String::from("code_mode.compile"),
        vec![
            (
                String::from("source.bytes").into(),
                payload::SpanValue::I64(3),
            ),
            ("made.up".into(), payload::SpanValue::Bool(true)),
        ],
    );
    record.events.push(payload::SpanEvent {
        name: String::from("timer fired").into(),
        unix_nanos: 1,
        attributes: vec![],
    });
    let mut codec = FrameCodec::<ServerMessage, ServerMessage>::new();
    let mut buffer = frame(&ServerMessage::Spans(vec![record.clone()]));
    let Some(ServerMessage::Spans(mut decoded)) = codec.decode(&mut buffer).unwrap() else {
        panic!("spans decode as spans");
    };
    assert_eq!(decoded, [record]);
    let decoded = decoded.remove(0);
    assert!(matches!(
        decoded.name.into_cow(),
        Cow::Borrowed("code_mode.compile")
    ));
    let mut keys = decoded
        .attributes
        .into_iter()
        .map(|(key, _)| key.into_cow());
    assert!(matches!(keys.next(), Some(Cow::Borrowed("source.bytes"))));
    assert!(matches!(keys.next(), Some(Cow::Owned(key)) if key == "made.up"));
    let event = decoded.events.into_iter().next().unwrap();
    assert!(matches!(
        event.name.into_cow(),
        Cow::Borrowed("timer fired")
    ));
}

/// A handed-back span, pinned: length 74, Spans, one record: its trace id, span id and
/// parent's id, each a byte string (length 16 or 8, then the bytes: protocol 13), the name
/// (18 bytes), times 1 and 2, one attribute ("typescript", Bool true), no events, status
/// unset.
const PINNED_SPANS: &str = "4a000000 0c 01
     10 01010101010101010101010101010101 08 0202020202020202 08 0303030303030303
     12 636f64655f6d6f64652e6576616c75617465 01 02
     01 0a 74797065736372697074 00 01 00 00";

#[tokio::test]
async fn a_peer_that_does_not_read_stalls_the_outbox_at_its_bound() {
    use futures_util::StreamExt;
    // The other end exists but never reads: writes stop once its small buffer is full.
    let (ours, _theirs) = tokio::io::duplex(1024);
    let Transport { outbox, .. } = transport::split::<_, ClientMessage, ServerMessage>(ours);
    let big = ServerMessage::Response {
        id: RequestId(1),
        result: Err(WireError::Internal("x".repeat(8 * 1024 * 1024))),
    };
    let mut sent = 0usize;
    let error = loop {
        match outbox.send(&big) {
            Ok(()) => sent += 1,
            Err(error) => break error,
        }
        assert!(sent < 100, "the outbox never filled");
    };
    assert!(matches!(error, FrameError::Backlog { .. }), "{error}");
    assert!(outbox.stalled().is_cancelled());
    assert!(outbox.queued_bytes() <= MAX_QUEUED_BYTES);
    assert!(
        sent * 8 * 1024 * 1024 >= MAX_QUEUED_BYTES - 9 * 1024 * 1024,
        "{sent}"
    );
    // A reader on a healthy stream is unaffected by this: its own transport is not stalled.
    let (left, right) = tokio::io::duplex(64 * 1024);
    let Transport { outbox, .. } = transport::split::<_, ClientMessage, ServerMessage>(left);
    let Transport { mut reader, .. } = transport::split::<_, ServerMessage, ClientMessage>(right);
    outbox.send(&ServerMessage::Pong(3)).unwrap();
    assert_eq!(
        reader.next().await.unwrap().unwrap(),
        ServerMessage::Pong(3)
    );
    assert!(!outbox.stalled().is_cancelled());
}

#[tokio::test]
async fn the_pinger_sends_numbered_pings_until_stopped() {
    use futures_util::StreamExt;
    let (left, right) = tokio::io::duplex(64 * 1024);
    let Transport { outbox, .. } = transport::split::<_, ClientMessage, ServerMessage>(left);
    let Transport { mut reader, .. } = transport::split::<_, ServerMessage, ClientMessage>(right);
    let pinger = transport::spawn_pinger(
        outbox,
        std::time::Duration::from_millis(10),
        ServerMessage::Ping,
    );
    for expected in 1..=3 {
        assert_eq!(
            reader.next().await.unwrap().unwrap(),
            ServerMessage::Ping(expected)
        );
    }
    pinger.abort();
    // With the pinger gone, nothing holds the outbox: the stream ends.
    loop {
        match reader.next().await {
            Some(Ok(ServerMessage::Ping(_))) => continue,
            None => break,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_written_at_once_queued_or_encoded_ahead_arrive_in_send_order() {
    use futures_util::StreamExt;
    // A small pipe: some frames go out from the sender at once, others (and those behind
    // them) wait for the writer task while the reader is slow.
    let (left, right) = tokio::io::duplex(256);
    let Transport { outbox, writer, .. } =
        transport::split::<_, ClientMessage, ServerMessage>(left);
    let Transport { mut reader, .. } = transport::split::<_, ServerMessage, ClientMessage>(right);
    let count = 300u64;
    let reading = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(message) = reader.next().await {
            match message.unwrap() {
                ServerMessage::Response { id, result } => {
                    let Err(WireError::Internal(text)) = result else {
                        panic!("unexpected result");
                    };
                    assert_eq!(text.len() as u64, (id.0 % 7) * 100);
                    seen.push(id.0);
                }
                other => panic!("unexpected {other:?}"),
            }
            if seen.len() % 50 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        seen
    });
    let message = |id: u64| ServerMessage::Response {
        id: RequestId(id),
        result: Err(WireError::Internal("x".repeat(((id % 7) * 100) as usize))),
    };
    // Every third frame is a word encoded ahead, all of them before any is sent and in
    // the reverse order: each goes out where it is sent, behind the frames sent before it.
    let mut ahead: std::collections::HashMap<u64, _> = (0..count)
        .rev()
        .filter(|id| id % 3 == 0)
        .map(|id| (id, Outbox::encode(&message(id)).unwrap()))
        .collect();
    for id in 0..count {
        match ahead.remove(&id) {
            Some(frame) => outbox.send_behind(frame).unwrap(),
            None => outbox.send(&message(id)).unwrap(),
        }
        if id % 40 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // The last sender gone, the writer writes what is queued and ends the stream.
    drop(outbox);
    writer.await.unwrap().unwrap();
    let seen = reading.await.unwrap();
    assert_eq!(seen, (0..count).collect::<Vec<_>>());
}

/// A stream that counts the writes made to it.
struct CountedWrites {
    inner: tokio::io::DuplexStream,
    writes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl tokio::io::AsyncRead for CountedWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountedWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Riding frames go ahead of the next frame sent, in its write; with none to ride with,
/// alone once [`RIDE_WITHIN`] has passed; and before the stream ends when the last sender
/// goes.
#[tokio::test]
async fn a_riding_frame_goes_in_the_next_frames_write_or_alone_once_due() {
    use futures_util::StreamExt;
    use std::sync::atomic::Ordering;
    let (left, right) = tokio::io::duplex(64 * 1024);
    let writes = std::sync::Arc::default();
    let counted = CountedWrites {
        inner: left,
        writes: std::sync::Arc::clone(&writes),
    };
    let Transport { outbox, writer, .. } =
        transport::split::<_, ClientMessage, ServerMessage>(counted);
    let Transport { mut reader, .. } = transport::split::<_, ServerMessage, ClientMessage>(right);
    let mut next = async || reader.next().await.expect("a frame").expect("a message");

    // The first rider sets the deadline: nothing is written before it.
    let first_rider = std::time::Instant::now();
    outbox.send_riding(&ServerMessage::Pong(1)).unwrap();
    outbox.send_riding(&ServerMessage::Pong(2)).unwrap();
    assert_eq!(
        writes.load(Ordering::SeqCst),
        0,
        "a rider went alone at once"
    );
    outbox.send(&ServerMessage::Pong(3)).unwrap();
    assert_eq!(next().await, ServerMessage::Pong(1));
    assert_eq!(next().await, ServerMessage::Pong(2));
    assert_eq!(next().await, ServerMessage::Pong(3));
    assert_eq!(
        writes.load(Ordering::SeqCst),
        1,
        "the riders took writes of their own"
    );
    assert_eq!(outbox.queued_bytes(), 0);

    // Alone, a rider waits for the deadline its cycle's first rider set.
    outbox.send_riding(&ServerMessage::Pong(4)).unwrap();
    assert_eq!(next().await, ServerMessage::Pong(4));
    assert!(
        first_rider.elapsed() >= transport::RIDE_WITHIN,
        "a rider went alone before its deadline"
    );
    assert_eq!(writes.load(Ordering::SeqCst), 2);

    // The last sender gone, the riders go before the stream ends.
    outbox.send_riding(&ServerMessage::Pong(5)).unwrap();
    drop(outbox);
    assert_eq!(next().await, ServerMessage::Pong(5));
    writer.await.unwrap().unwrap();
    assert!(reader.next().await.is_none());
}
