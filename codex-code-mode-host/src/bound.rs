//! Codex's output bounding ("bounded-output-v1", truncation mode 2), done by the host as
//! Codex's own host does it, to the byte: a per-cell bound on buffered text, then a token
//! budget per observation.
//!
//! Tokens are estimated as `ceil(bytes / 4)`. Output within the budget goes out item by
//! item. Over it, text-only output becomes one item: a warning header, then the joined
//! text cut in the middle (`<head>…N tokens truncated…<tail>`); output with images keeps
//! its items, and text items share the budget in order (the one that crosses it is cut,
//! later ones are counted in `[omitted N text items ...]`). Cuts fall on character
//! boundaries.
//!
//! Before the token budget, each observation's text is held to [`CELL_TEXT_BOUND`]: a head
//! and a tail of half the bound each, with a marker item where text was dropped. The
//! failed script's `Script error:` item is added between the two steps, so the budget
//! counts it. All of this happens only when the client asked the host to truncate.

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

/// `text` within `max_tokens`: unchanged when it fits (or is empty), else its head and
/// tail around `…N tokens truncated…`. The second value is the original token count when
/// cut.
pub fn truncate_middle(text: &str, max_tokens: usize) -> (String, Option<usize>) {
    match cut_middle(text, max_tokens) {
        None => (text.to_owned(), None),
        Some(cut) => (
            format!("{}{}{}", cut.prefix, cut.marker, cut.suffix),
            Some(cut.original_tokens),
        ),
    }
}

/// A text cut in its middle: the kept head and tail, and the marker between them.
struct MiddleCut<'a> {
    prefix: &'a str,
    marker: String,
    suffix: &'a str,
    /// The whole text's size in (approximate) tokens.
    original_tokens: usize,
}

/// `text` cut in its middle to `max_tokens`, or `None` when it fits.
fn cut_middle(text: &str, max_tokens: usize) -> Option<MiddleCut<'_>> {
    let max_bytes = max_tokens.saturating_mul(BYTES_PER_TOKEN);
    if text.is_empty() || (max_tokens > 0 && text.len() <= max_bytes) {
        return None;
    }
    let head = max_bytes / 2;
    let tail = max_bytes - head;
    let (_, prefix, suffix) = split_middle(text, head, tail);
    let removed = text.len() - prefix.len() - suffix.len();
    Some(MiddleCut {
        prefix,
        marker: format!("…{} tokens truncated…", approx_tokens(removed)),
        suffix,
        original_tokens: approx_tokens(text.len()),
    })
}

/// One piece of bounded output: an item, or the marker of a gap the bound left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Item(ContentItem),
    /// The kept tail of the text item before the gap that precedes it: the same item of
    /// the cell's output, so joined to its head without a separator.
    Rest(String),
    Gap(Gap),
}

/// What the bound dropped at one place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gap {
    pub omitted_bytes: usize,
    pub segments: usize,
}

impl Gap {
    /// The marker item the model sees.
    pub fn marker(&self) -> String {
        format!(
            "[Code Mode session output limit reached: omitted {} text bytes; discarded {} text segments, 0 images, 0 audio items]",
            self.omitted_bytes, self.segments
        )
    }
}

/// One observation's items within [`CELL_TEXT_BOUND`]: the first half-bound bytes of
/// text stay, and a tail of the last half-bound bytes is kept as output arrives, text
/// falling out of it from the front (whole segments are counted as discarded, a cut one
/// only by its bytes). Images and clips are never dropped. Each place where text was
/// dropped holds one [`Gap`].
pub fn bound_items(items: Vec<ContentItem>) -> Vec<Entry> {
    let total: usize = items
        .iter()
        .filter_map(ContentItem::as_text)
        .map(str::len)
        .sum();
    if total <= CELL_TEXT_BOUND {
        return items.into_iter().map(Entry::Item).collect();
    }
    let half = CELL_TEXT_BOUND / 2;
    let mut head = Vec::new();
    let mut head_bytes = 0usize;
    let mut tail: std::collections::VecDeque<Entry> = std::collections::VecDeque::new();
    let mut tail_bytes = 0usize;
    for item in items {
        let item = if head_bytes < half {
            match item {
                ContentItem::InputText { text } => {
                    let (_, prefix, _) = split_middle(&text, half - head_bytes, 0);
                    let taken = prefix.len();
                    head_bytes += taken;
                    if taken == text.len() {
                        head.push(Entry::Item(ContentItem::InputText { text }));
                        continue;
                    }
                    head.push(Entry::Item(ContentItem::text(text[..taken].to_owned())));
                    // A character that would cross the bound starts the tail.
                    head_bytes = head_bytes.max(half);
                    tail_bytes += text.len() - taken;
                    tail.push_back(Entry::Rest(text[taken..].to_owned()));
                    trim_tail(&mut tail, &mut tail_bytes, half);
                    continue;
                }
                other => {
                    head.push(Entry::Item(other));
                    continue;
                }
            }
        } else {
            item
        };
        if let Some(text) = item.as_text() {
            tail_bytes += text.len();
        }
        tail.push_back(Entry::Item(item));
        trim_tail(&mut tail, &mut tail_bytes, half);
    }
    head.extend(tail);
    head
}

/// Drops text from the front of `tail` until it holds at most `keep` bytes of text.
fn trim_tail(tail: &mut std::collections::VecDeque<Entry>, tail_bytes: &mut usize, keep: usize) {
    let mut index = 0;
    while *tail_bytes > keep && index < tail.len() {
        let excess = *tail_bytes - keep;
        let (dropped, whole) = match &mut tail[index] {
            Entry::Item(ContentItem::InputText { text }) | Entry::Rest(text) => {
                if text.len() <= excess {
                    (text.len(), true)
                } else {
                    let mut cut = excess;
                    while !text.is_char_boundary(cut) {
                        cut += 1;
                    }
                    text.drain(..cut);
                    (cut, false)
                }
            }
            _ => {
                index += 1;
                continue;
            }
        };
        *tail_bytes -= dropped;
        if whole {
            tail.remove(index);
        }
        // The gap just before `index` grows, or one is made there.
        let gap_index = match index.checked_sub(1) {
            Some(before) if matches!(tail[before], Entry::Gap(_)) => before,
            _ => {
                tail.insert(index, Entry::Gap(Gap::default()));
                index += 1;
                index - 1
            }
        };
        if let Entry::Gap(gap) = &mut tail[gap_index] {
            gap.omitted_bytes += dropped;
            gap.segments += usize::from(whole);
        }
    }
}

/// Bounded output within `max_tokens` (see the module docs); gaps become their markers.
pub fn truncate_entries(entries: Vec<Entry>, max_tokens: u64) -> Vec<ContentItem> {
    let budget = usize::try_from(max_tokens).unwrap_or(usize::MAX);
    let all_text = entries.iter().all(|entry| match entry {
        Entry::Item(item) => item.as_text().is_some(),
        Entry::Rest(_) | Entry::Gap(_) => true,
    });
    if all_text {
        truncate_text(entries, budget)
    } else {
        truncate_beside_media(entries, budget)
    }
}

/// Text only: the items joined by newlines (a kept rest continues its item's head
/// directly), cut in the middle under a header; a gap's marker stays in the cut middle.
fn truncate_text(entries: Vec<Entry>, budget: usize) -> Vec<ContentItem> {
    let mut joined = String::new();
    let mut first = true;
    for entry in &entries {
        match entry {
            Entry::Item(item) => {
                if !first {
                    joined.push('\n');
                }
                joined.push_str(item.as_text().unwrap_or_default());
            }
            Entry::Rest(rest) => joined.push_str(rest),
            Entry::Gap(_) => continue,
        }
        first = false;
    }
    let Some(cut) = cut_middle(&joined, budget) else {
        return entries.into_iter().map(entry_item).collect();
    };
    let lines = joined.lines().count();
    let header = format!(
        "Warning: truncated output (original token count: {})\nTotal output lines: {lines}\n\n",
        cut.original_tokens
    );
    let gaps: Vec<&Gap> = entries
        .iter()
        .filter_map(|entry| match entry {
            Entry::Gap(gap) => Some(gap),
            Entry::Item(_) | Entry::Rest(_) => None,
        })
        .collect();
    let MiddleCut {
        prefix,
        marker,
        suffix,
        ..
    } = cut;
    if gaps.is_empty() {
        return vec![ContentItem::text(format!(
            "{header}{prefix}{marker}{suffix}"
        ))];
    }
    // The gap's marker stays where the gap was, in the cut middle: the head and the
    // marker of the cut before it, the tail after it.
    let mut out = vec![ContentItem::text(format!("{header}{prefix}{marker}"))];
    out.extend(gaps.iter().map(|gap| ContentItem::text(gap.marker())));
    if !suffix.is_empty() {
        out.push(ContentItem::text(suffix.to_owned()));
    }
    out
}

/// With images the items stay; text items share the budget in order, the one that
/// crosses it is cut, and the ones after it are counted in a closing marker. Empty text
/// items go (Codex's host drops them from output with images; kept otherwise).
fn truncate_beside_media(entries: Vec<Entry>, budget: usize) -> Vec<ContentItem> {
    let mut remaining = budget;
    let mut omitted = 0usize;
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let text = match entry {
            Entry::Item(ContentItem::InputText { text }) | Entry::Rest(text) => text,
            other => {
                out.push(entry_item(other));
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        if remaining == 0 {
            omitted += 1;
            continue;
        }
        let cost = approx_tokens(text.len());
        if cost <= remaining {
            remaining -= cost;
            out.push(ContentItem::InputText { text });
            continue;
        }
        let (snippet, _) = truncate_middle(&text, remaining);
        remaining = 0;
        if snippet.is_empty() {
            omitted += 1;
        } else {
            out.push(ContentItem::text(snippet));
        }
    }
    if omitted > 0 {
        out.push(ContentItem::text(format!(
            "[omitted {omitted} text items ...]"
        )));
    }
    out
}

fn entry_item(entry: Entry) -> ContentItem {
    match entry {
        Entry::Item(item) => item,
        Entry::Rest(text) => ContentItem::text(text),
        Entry::Gap(gap) => ContentItem::text(gap.marker()),
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

    #[test]
    fn a_gap_marker_follows_the_cuts_own_marker_even_when_the_output_mimics_it() {
        // The kept tail of the cell's output holds text shaped like the cut's marker: the
        // gap's marker still goes right after the cut's real marker.
        let entries = vec![
            Entry::Item(ContentItem::text("a".repeat(400))),
            Entry::Gap(Gap {
                omitted_bytes: 7,
                segments: 1,
            }),
            Entry::Item(ContentItem::text(format!(
                "{}…9 tokens truncated…END",
                "b".repeat(400)
            ))),
        ];
        let out = truncate_entries(entries, 20);
        let texts: Vec<&str> = out.iter().filter_map(ContentItem::as_text).collect();
        assert_eq!(texts.len(), 3, "{texts:#?}");
        assert!(
            texts[0].starts_with("Warning: truncated output"),
            "{texts:#?}"
        );
        assert!(texts[0].ends_with(" tokens truncated…"), "{texts:#?}");
        assert!(!texts[0].contains("END"), "{texts:#?}");
        assert_eq!(
            texts[1],
            Gap {
                omitted_bytes: 7,
                segments: 1
            }
            .marker()
        );
        assert!(texts[2].ends_with("…9 tokens truncated…END"), "{texts:#?}");
    }
}
