//! Codex's output bounding ("bounded-output-v1", truncation mode 2), done by the host as
//! Codex's own host does it, to the byte: a per-cell bound on buffered text, then a token
//! budget per observation.
//!
//! Tokens are estimated as `ceil(bytes / 4)`. Output within the budget goes out item by
//! item. Over it, text-only output becomes one item: a warning header, then the joined
//! text cut in the middle (`<head>…N tokens truncated…<tail>`); output with images keeps
//! its items and cuts each text item alone. Cuts fall on character boundaries.

use code_mode_host::protocol::ContentItem;

/// The token budget of an observation that names none.
pub const DEFAULT_MAX_TOKENS: u64 = 10_000;

/// Bytes per estimated token.
pub const BYTES_PER_TOKEN: usize = 4;

/// Text a cell may buffer between two observations before the middle is dropped.
pub const CELL_TEXT_BOUND: usize = 1024 * 1024;

/// The estimated tokens of `bytes` bytes of text.
pub fn approx_tokens(bytes: usize) -> usize {
    bytes.div_ceil(BYTES_PER_TOKEN)
}

/// The longest prefix of `text` within `head` bytes and the longest suffix within `tail`
/// bytes that does not overlap it, both on character boundaries, with the number of
/// characters between them.
pub fn split_middle(text: &str, head: usize, tail: usize) -> (usize, &str, &str) {
    let mut prefix_end = 0;
    for (index, c) in text.char_indices() {
        if index + c.len_utf8() > head {
            break;
        }
        prefix_end = index + c.len_utf8();
    }
    let tail_start_min = text.len().saturating_sub(tail).max(prefix_end);
    let mut suffix_start = text.len();
    for (index, _) in text.char_indices().rev() {
        if index < tail_start_min {
            break;
        }
        suffix_start = index;
    }
    let removed = text[prefix_end..suffix_start].chars().count();
    (removed, &text[..prefix_end], &text[suffix_start..])
}

/// `text` within `max_tokens`: unchanged when it fits, else its head and tail around
/// `…N tokens truncated…`. The second value is the original token count when cut.
pub fn truncate_middle(text: &str, max_tokens: usize) -> (String, Option<usize>) {
    let max_bytes = max_tokens.saturating_mul(BYTES_PER_TOKEN);
    if text.len() <= max_bytes {
        return (text.to_owned(), None);
    }
    let head = max_bytes / 2;
    let tail = max_bytes - head;
    let (_, prefix, suffix) = split_middle(text, head, tail);
    let removed = text.len() - prefix.len() - suffix.len();
    let out = format!(
        "{prefix}…{} tokens truncated…{suffix}",
        approx_tokens(removed)
    );
    (out, Some(approx_tokens(text.len())))
}

/// An observation's items within `max_tokens` (see the module docs).
pub fn truncate_items(items: Vec<ContentItem>, max_tokens: u64) -> Vec<ContentItem> {
    let budget = usize::try_from(max_tokens).unwrap_or(usize::MAX);
    let text_bytes: usize = items
        .iter()
        .filter_map(ContentItem::as_text)
        .map(str::len)
        .sum();
    if text_bytes <= budget.saturating_mul(BYTES_PER_TOKEN) {
        return items;
    }
    let all_text = items.iter().all(|item| item.as_text().is_some());
    if all_text {
        let joined = items
            .iter()
            .filter_map(ContentItem::as_text)
            .collect::<Vec<_>>()
            .join("\n");
        let lines = joined.lines().count();
        let (cut, _) = truncate_middle(&joined, budget);
        let header = format!(
            "Warning: truncated output (original token count: {})\nTotal output lines: {lines}\n\n",
            approx_tokens(joined.len())
        );
        return vec![ContentItem::text(format!("{header}{cut}"))];
    }
    items
        .into_iter()
        .map(|item| match item {
            ContentItem::InputText { text } => ContentItem::text(truncate_middle(&text, budget).0),
            other => other,
        })
        .collect()
}

/// The per-cell bound on buffered text ([`CELL_TEXT_BOUND`]).
#[derive(Debug, Default)]
pub struct CellBound {}

impl CellBound {
    /// The items of one observation within the bound: text over it keeps its first and
    /// last half-bound bytes around a marker item that says what was omitted.
    pub fn apply(&mut self, items: Vec<ContentItem>) -> Vec<ContentItem> {
        let text_bytes: usize = items
            .iter()
            .filter_map(ContentItem::as_text)
            .map(str::len)
            .sum();
        if text_bytes <= CELL_TEXT_BOUND {
            return items;
        }
        let half = CELL_TEXT_BOUND / 2;
        let mut out = Vec::new();
        let mut head_left = half;
        let mut omitted = 0usize;
        let mut tail: Vec<ContentItem> = Vec::new();
        // Bytes of text from the end that the tail keeps.
        let mut tail_left = half;
        let mut kept_for_tail = vec![false; items.len()];
        for (index, item) in items.iter().enumerate().rev() {
            if let Some(text) = item.as_text()
                && tail_left > 0
            {
                kept_for_tail[index] = true;
                tail_left = tail_left.saturating_sub(text.len());
            }
        }
        let mut tail_budget = half;
        let mut rev_tail = Vec::new();
        for (index, item) in items.iter().enumerate().rev() {
            if !kept_for_tail[index] {
                continue;
            }
            let text = item.as_text().unwrap_or_default();
            let (_, _, suffix) = split_middle(text, 0, tail_budget);
            tail_budget -= suffix.len();
            rev_tail.push((index, suffix.len()));
        }
        let tail_from: std::collections::HashMap<usize, usize> = rev_tail.into_iter().collect();
        for (index, item) in items.into_iter().enumerate() {
            match item {
                ContentItem::InputText { text } => {
                    let keep_tail = tail_from.get(&index).copied().unwrap_or(0);
                    let (_, prefix, _) = split_middle(&text, head_left, 0);
                    head_left -= prefix.len();
                    let prefix_len = prefix.len();
                    let tail_start = text.len() - keep_tail.min(text.len() - prefix_len);
                    omitted += tail_start - prefix_len;
                    if prefix_len > 0 {
                        out.push(ContentItem::text(text[..prefix_len].to_owned()));
                    }
                    if tail_start < text.len() {
                        tail.push(ContentItem::text(text[tail_start..].to_owned()));
                    }
                }
                other => {
                    if head_left > 0 {
                        out.push(other);
                    } else {
                        tail.push(other);
                    }
                }
            }
        }
        out.push(ContentItem::text(format!(
            "[Code Mode session output limit reached: omitted {omitted} text bytes; discarded 0 text segments, 0 images, 0 audio items]"
        )));
        out.extend(tail);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_character_boundaries() {
        assert_eq!(split_middle("hello world", 5, 5), (1, "hello", "world"));
        assert_eq!(split_middle("abc", 0, 0), (3, "", ""));
        assert_eq!(split_middle("", 4, 4), (0, "", ""));
        assert_eq!(split_middle("abcdef", 3, 0), (3, "abc", ""));
        assert_eq!(split_middle("abcdef", 0, 3), (3, "", "def"));
        assert_eq!(split_middle("abcdef", 4, 4), (0, "abcd", "ef"));
        assert_eq!(split_middle("😀abc😀", 5, 5), (1, "😀a", "c😀"));
        assert_eq!(split_middle("😀😀😀😀😀", 1, 1), (5, "", ""));
        assert_eq!(split_middle("😀😀😀😀😀", 7, 7), (3, "😀", "😀"));
        assert_eq!(split_middle("😀😀😀😀😀", 8, 8), (1, "😀😀", "😀😀"));
    }

    #[test]
    fn middle_truncation_counts_removed_tokens() {
        assert_eq!(
            truncate_middle("short output", 100),
            ("short output".to_owned(), None)
        );
        assert_eq!(
            truncate_middle("abcdef", 0),
            ("…2 tokens truncated…".to_owned(), Some(2))
        );
        let text = "😀😀😀😀😀😀😀😀😀😀\nsecond line with text\n";
        assert_eq!(
            truncate_middle(text, 8),
            (
                "😀😀😀😀…8 tokens truncated… line with text\n".to_owned(),
                Some(16)
            )
        );
    }
}
