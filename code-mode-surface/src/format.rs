//! The tool output the model sees for a cell response: a status header, the wall time,
//! `Output:`, the cell's items within the token budget, and the error text.
//!
//! Token counting is approximate by design: one token is taken as [`BYTES_PER_TOKEN`]
//! bytes of UTF-8 text. The budget covers the cell's text items in order; the item that
//! crosses it is cut at a character boundary, later text items are dropped, images and
//! audio are always kept, and a marker line says how much was left out. The error text has its own
//! budget of the same size, so a failure is never hidden by a flood of output.

use code_mode_protocol::model::ContentItem;
use code_mode_protocol::session::CellResponse;
use code_mode_protocol::texts;

/// Bytes of UTF-8 text counted as one token.
pub const BYTES_PER_TOKEN: u64 = 4;

/// The status line of a response.
pub fn status_line(response: &CellResponse) -> String {
    match response {
        CellResponse::Yielded { cell_id, .. } => texts::script_running(cell_id),
        CellResponse::Terminated { .. } => texts::SCRIPT_TERMINATED.to_owned(),
        CellResponse::Result { failure: None, .. } => texts::SCRIPT_COMPLETED.to_owned(),
        CellResponse::Result { .. } => texts::SCRIPT_FAILED.to_owned(),
    }
}

/// The tool output for `response` within `max_output_tokens`. Its `Wall time` line is the
/// time the provider measured for the observation (contract 8.5).
pub fn format_response(response: &CellResponse, max_output_tokens: u64) -> Vec<ContentItem> {
    format_response_omitting(response, max_output_tokens, 0)
}

/// [`format_response`] for a response whose text items were already cut by whoever
/// gathered them: `omitted_bytes` more bytes of text came after them, and count in the
/// marker line that says how much was left out.
pub fn format_response_omitting(
    response: &CellResponse,
    max_output_tokens: u64,
    omitted_bytes: u64,
) -> Vec<ContentItem> {
    let header = format!(
        "{}\n{}\n{}",
        status_line(response),
        texts::wall_time(response.wall_time().as_secs_f64()),
        texts::OUTPUT
    );
    let mut items = vec![ContentItem::text(header)];
    let budget = max_output_tokens.saturating_mul(BYTES_PER_TOKEN);
    let mut used = 0u64;
    let mut omitted = 0u64;
    for item in response.content_items() {
        match item {
            ContentItem::InputImage { .. } | ContentItem::InputAudio { .. } => {
                items.push(item.clone())
            }
            ContentItem::InputText { text } => {
                let size = text.len() as u64;
                if omitted > 0 {
                    omitted += size;
                } else if used + size <= budget {
                    used += size;
                    items.push(item.clone());
                } else {
                    let kept = cut(text, budget - used);
                    omitted += size - kept.len() as u64;
                    used = budget;
                    if !kept.is_empty() {
                        items.push(ContentItem::text(kept));
                    }
                }
            }
        }
    }
    let omitted = omitted + omitted_bytes;
    if omitted > 0 {
        items.push(ContentItem::text(marker(omitted, max_output_tokens)));
    }
    if let Some(error) = response.error_text() {
        let kept = cut(error, budget);
        let mut text = texts::script_error(kept);
        if kept.len() < error.len() {
            text.push('\n');
            text.push_str(&marker(
                (error.len() - kept.len()) as u64,
                max_output_tokens,
            ));
        }
        items.push(ContentItem::text(text));
    }
    items
}

/// The longest prefix of `text` of at most `bytes` bytes that ends on a character boundary.
fn cut(text: &str, bytes: u64) -> &str {
    let mut end = usize::try_from(bytes).unwrap_or(usize::MAX).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn marker(omitted_bytes: u64, max_output_tokens: u64) -> String {
    texts::output_truncated(omitted_bytes.div_ceil(BYTES_PER_TOKEN), max_output_tokens)
}
