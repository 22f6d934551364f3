//! A request's event stream kept after its connection broke, so that the client resumes
//! it with `Last-Event-ID` and gets every event after the last one it saw.
//!
//! rmcp keeps a request's stream only while its HTTP response is read: when the
//! connection breaks (a client's network, or a replica that forwarded the request dying
//! under it), the tool call still runs, but its result goes nowhere, and a `wait` loses
//! the output it took from its cell. Here the response of every `POST` naming a session
//! is read to its end whatever happens to the connection, its events are kept, and the
//! client's own body is one reader of them. A stream stays for [`KEPT_FOR`] after its end
//! (the SDKs resume within seconds), at most [`KEPT_PER_SESSION`] of them and
//! [`KEPT_BYTES_PER_SESSION`] per session (the oldest ended ones go first), and a
//! session's go when it ends.
//!
//! It also tells the request's handler whether anyone still reads its answer
//! ([`Readers`]): an observation whose stream nobody reads when it ends (its client's
//! connection broke, and no resumption came back in time) holds its output for the
//! cell's next `wait` instead ([`super::observing`]), since a client that saw no event id
//! of the stream cannot resume it and sends its `wait` again.

use bytes::Bytes;
use code_mode_internal::sync::lock;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long an ended stream stays resumable.
const KEPT_FOR: Duration = Duration::from_secs(60);
/// The most streams kept per session.
const KEPT_PER_SESSION: usize = 64;
/// The most bytes of events kept per session (ended streams beyond it are dropped, the
/// oldest first; a stream still being answered is kept whole).
const KEPT_BYTES_PER_SESSION: usize = 16 * 1024 * 1024;

type Body = BoxBody<Bytes, Infallible>;

/// Every session's recent request streams.
#[derive(Default)]
pub(crate) struct Recordings {
    sessions: Mutex<HashMap<String, Vec<Arc<Recording>>>>,
}

/// Who reads one request's event stream now: the HTTP front puts it in the request (rmcp
/// hands the request's parts to the handler) and in the request's recording, whose every
/// reader (the client's first body, each resumption) counts itself while it lives.
#[derive(Clone)]
pub(crate) struct Readers(Arc<watch::Sender<ReaderCount>>);

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum ReaderCount {
    /// No reader yet: the request is still being handled before its response exists, or
    /// its response is not an event stream (it is answered whole, nothing to resume).
    #[default]
    NotYet,
    Reading(usize),
}

impl Default for Readers {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(ReaderCount::NotYet)))
    }
}

impl Readers {
    /// Whether the stream had readers and has none now: its client's connection broke
    /// and no resumption is reading it.
    pub(crate) fn orphaned(&self) -> bool {
        *self.0.borrow() == ReaderCount::Reading(0)
    }

    /// Returns once the stream has a reader again (a resumption), or at once if it has.
    pub(crate) async fn read_again(&self) {
        let mut changes = self.0.subscribe();
        // The sender lives as long as `self`.
        let _ = changes
            .wait_for(|count| *count != ReaderCount::Reading(0))
            .await;
    }

    fn attach(&self) -> Reading {
        self.0.send_modify(|count| {
            *count = match *count {
                ReaderCount::NotYet => ReaderCount::Reading(1),
                ReaderCount::Reading(n) => ReaderCount::Reading(n + 1),
            };
        });
        Reading(self.clone())
    }
}

/// One reader of a stream, counted in its [`Readers`] until it is dropped.
struct Reading(Readers);

impl Drop for Reading {
    fn drop(&mut self) {
        (self.0).0.send_modify(|count| {
            if let ReaderCount::Reading(n) = *count {
                *count = ReaderCount::Reading(n.saturating_sub(1));
            }
        });
    }
}

/// One request's events, as rmcp gave them, their ids made this recording's own.
struct Recording {
    /// Put before each event's id (`TOKEN.ID`): rmcp numbers a session's requests from 0
    /// again when it is restored, so its ids alone could name another request's events.
    token: String,
    events: Mutex<Events>,
    /// Bumped at every event and at the end, for the readers.
    changed: watch::Sender<usize>,
    readers: Readers,
}

#[derive(Default)]
struct Events {
    /// Whole events (up to and with their blank line), each with its `id`.
    whole: Vec<(Option<String>, Bytes)>,
    /// Bytes of an event not yet ended.
    partial: Vec<u8>,
    bytes: usize,
    ended: Option<Instant>,
}

impl Recordings {
    /// Keeps `response` (to a request of `session`) if it is an event stream: it is read to
    /// its end from now on, and the response given back reads what was kept, counted in
    /// `readers` (the request's own).
    pub(crate) fn record(
        &self,
        session: &str,
        response: hyper::Response<Body>,
        readers: Readers,
    ) -> hyper::Response<Body> {
        if !is_event_stream(&response) {
            return response;
        }
        let (parts, mut body) = response.into_parts();
        let (changed, _) = watch::channel(0);
        let recording = Arc::new(Recording::new(changed, readers));
        self.keep(session, Arc::clone(&recording));
        let reading = Arc::clone(&recording);
        tokio::spawn(async move {
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame;
                if let Ok(data) = frame.into_data() {
                    reading.push(&data);
                }
            }
            reading.end();
        });
        hyper::Response::from_parts(parts, reader(recording, 0))
    }

    /// The events of `session`'s kept stream after the one `last_event_id` names, then
    /// the rest as it comes; `None` when no kept stream has that event.
    pub(crate) fn resume(
        &self,
        session: &str,
        last_event_id: &str,
    ) -> Option<hyper::Response<Body>> {
        let (recording, next) = {
            let mut sessions = lock(&self.sessions);
            let kept = sessions.get_mut(session)?;
            prune(kept);
            kept.iter().find_map(|recording| {
                let events = lock(&recording.events);
                let at = events
                    .whole
                    .iter()
                    .position(|(id, _)| id.as_deref() == Some(last_event_id))?;
                // An ended stream with nothing after that event: rmcp's `410` (resuming an
                // empty stream, the SDKs would reconnect until their timeout).
                if events.ended.is_some() && at + 1 >= events.whole.len() {
                    return None;
                }
                Some((Arc::clone(recording), at + 1))
            })?
        };
        tracing::debug!("a request's event stream resumed from what was kept");
        let mut response = hyper::Response::new(reader(recording, next));
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-cache"),
        );
        Some(response)
    }

    /// Forgets what `session` kept (it ended).
    pub(crate) fn forget(&self, session: &str) {
        lock(&self.sessions).remove(session);
    }

    fn keep(&self, session: &str, recording: Arc<Recording>) {
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, kept| {
            prune(kept);
            !kept.is_empty()
        });
        sessions
            .entry(session.to_owned())
            .or_default()
            .push(recording);
    }
}

/// Drops a session's streams that ended over [`KEPT_FOR`] ago, then the oldest ended ones
/// past the count and byte bounds.
fn prune(kept: &mut Vec<Arc<Recording>>) {
    let now = Instant::now();
    kept.retain(|recording| {
        lock(&recording.events)
            .ended
            .is_none_or(|ended| now.duration_since(ended) < KEPT_FOR)
    });
    let mut bytes: usize = kept.iter().map(|r| lock(&r.events).bytes).sum();
    let mut count = kept.len();
    kept.retain(|recording| {
        let events = lock(&recording.events);
        let over = count > KEPT_PER_SESSION || bytes > KEPT_BYTES_PER_SESSION;
        if over && events.ended.is_some() {
            count -= 1;
            bytes -= events.bytes;
            false
        } else {
            true
        }
    });
}

impl Recording {
    fn new(changed: watch::Sender<usize>, readers: Readers) -> Self {
        Self {
            token: crate::serve::fresh_id('r'),
            events: Mutex::new(Events::default()),
            changed,
            readers,
        }
    }

    /// Bytes of the stream: each event they end is kept whole, its `id` made `TOKEN.ID`.
    fn push(&self, data: &[u8]) {
        let mut events = lock(&self.events);
        events.partial.extend_from_slice(data);
        while let Some(end) = event_end(&events.partial) {
            let event: Vec<u8> = events.partial.drain(..end).collect();
            let (id, event) = own_id(&self.token, event);
            events.bytes += event.len();
            events.whole.push((id, Bytes::from(event)));
        }
        let count = events.whole.len();
        drop(events);
        self.changed.send_replace(count);
    }

    fn end(&self) {
        let mut events = lock(&self.events);
        if !events.partial.is_empty() {
            let rest = Bytes::from(std::mem::take(&mut events.partial));
            events.bytes += rest.len();
            events.whole.push((None, rest));
        }
        events.ended = Some(Instant::now());
        let count = events.whole.len();
        drop(events);
        // A bump even with no new event: readers see the end.
        self.changed
            .send_modify(|seen| *seen = count.max(*seen + 1));
    }
}

/// A body of `recording`'s events from index `next` on, to the stream's end.
fn reader(recording: Arc<Recording>, next: usize) -> Body {
    let changed = recording.changed.subscribe();
    let reading = recording.readers.attach();
    let events = futures_util::stream::unfold(next, move |next| {
        // Counted as a reader while the body (which owns this closure) lives.
        let _reading = &reading;
        let recording = Arc::clone(&recording);
        let mut changed = changed.clone();
        async move {
            loop {
                {
                    let events = lock(&recording.events);
                    if let Some((_, event)) = events.whole.get(next) {
                        let frame = hyper::body::Frame::data(event.clone());
                        return Some((Ok::<_, Infallible>(frame), next + 1));
                    }
                    if events.ended.is_some() {
                        return None;
                    }
                    changed.mark_unchanged();
                }
                // The sender lives as long as the recording this closure holds.
                let _ = changed.changed().await;
            }
        }
    });
    BodyExt::boxed(http_body_util::StreamBody::new(events))
}

fn is_event_stream(response: &hyper::Response<Body>) -> bool {
    response.status() == http::StatusCode::OK
        && response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"))
}

/// Where the first event in `bytes` ends (after its blank line: `\n\n`, `\r\n\r\n` or
/// `\r\r`), if it does.
fn event_end(bytes: &[u8]) -> Option<usize> {
    let mut previous_newline = false;
    let mut i = 0;
    while i < bytes.len() {
        let newline = match bytes[i] {
            b'\n' => Some(1),
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => Some(2),
            b'\r' => Some(1),
            _ => None,
        };
        match newline {
            Some(width) => {
                if previous_newline {
                    return Some(i + width);
                }
                previous_newline = true;
                i += width;
            }
            None => {
                previous_newline = false;
                i += 1;
            }
        }
    }
    None
}

/// One event with its `id` field, if it has one, made `TOKEN.ID`; that id.
fn own_id(token: &str, event: Vec<u8>) -> (Option<String>, Vec<u8>) {
    let Ok(text) = std::str::from_utf8(&event) else {
        return (None, event);
    };
    let mut id = None;
    let mut owned = String::with_capacity(text.len() + token.len() + 1);
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        match body.strip_prefix("id:") {
            Some(value) if id.is_none() => {
                let value = value.strip_prefix(' ').unwrap_or(value);
                let mine = format!("{token}.{value}");
                owned.push_str("id: ");
                owned.push_str(&mine);
                owned.push_str(&line[body.len()..]);
                id = Some(mine);
            }
            _ => owned.push_str(line),
        }
    }
    (id, owned.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_at_their_blank_lines_with_ids_of_their_own() {
        let recording = Recording::new(watch::channel(0).0, Readers::default());
        recording.push(b"data: \nid: 0/3\nretry: 3000\n\nda");
        recording.push(b"ta: {\"id\":2}\r\nid: 1/3\r\n\r\n: ping\n\n");
        recording.end();
        let events = lock(&recording.events);
        let token = &recording.token;
        let ids: Vec<Option<String>> = events.whole.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(
            ids,
            [
                Some(format!("{token}.0/3")),
                Some(format!("{token}.1/3")),
                None
            ]
        );
        assert_eq!(
            String::from_utf8_lossy(&events.whole[1].1),
            format!("data: {{\"id\":2}}\r\nid: {token}.1/3\r\n\r\n")
        );
        assert_eq!(&events.whole[2].1[..], b": ping\n\n");
        assert!(events.ended.is_some());
        // Another recording (of a request rmcp numbers alike) has other ids.
        assert_ne!(
            Recording::new(watch::channel(0).0, Readers::default()).token,
            *token
        );
    }

    #[tokio::test]
    async fn a_stream_resumes_after_the_event_named_and_goes_on_to_its_end() {
        let recordings = Recordings::default();
        let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
        let body = http_body_util::StreamBody::new(futures_util::stream::unfold(
            receiver,
            |mut receiver| async move {
                let data = receiver.recv().await?;
                Some((
                    Ok::<_, Infallible>(hyper::body::Frame::data(data)),
                    receiver,
                ))
            },
        ));
        let mut response = hyper::Response::new(BodyExt::boxed(body));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        let readers = Readers::default();
        assert!(!readers.orphaned(), "no reader yet is not a reader gone");
        let first = recordings.record("s", response, readers.clone());
        assert!(!readers.orphaned());
        // The client's connection breaks at once: its body is dropped unread.
        drop(first);
        assert!(readers.orphaned());
        sender
            .send(Bytes::from_static(b"id: 0/7\n\n"))
            .await
            .unwrap();
        let recording = Arc::clone(&lock(&recordings.sessions)["s"][0]);
        let first = format!("{}.0/7", recording.token);
        while lock(&recording.events).whole.is_empty() {
            tokio::task::yield_now().await;
        }
        // Resumed while the answer is still to come: the reader waits for it.
        let resumed = recordings.resume("s", &first).expect("kept");
        assert!(!readers.orphaned(), "a resumption reads it");
        readers.read_again().await;
        assert!(recordings.resume("other", &first).is_none());
        assert!(recordings.resume("s", "0/7").is_none(), "rmcp's id alone");
        let reading = tokio::spawn(resumed.into_body().collect());
        sender
            .send(Bytes::from_static(b"data: late\nid: 1/7\n\n"))
            .await
            .unwrap();
        drop(sender);
        let body = reading.await.unwrap().unwrap().to_bytes();
        let last = format!("{}.1/7", recording.token);
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("data: late\nid: {last}\n\n")
        );
        // Ended, with nothing after its last event: not resumed (rmcp answers `410`).
        assert!(recordings.resume("s", &last).is_none());
        recordings.forget("s");
        assert!(recordings.resume("s", &first).is_none());
    }
}
