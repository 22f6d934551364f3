//! Printing what cells produce for a person (the JSON forms every front end shares are in
//! `code_mode_surface::json`).
//!
//! **Terminal policy.** Text a cell produced (output, notifications, error texts, even an
//! image's MIME type) is model-written and must never drive the user's terminal: the
//! human-readable output shows every C0 and C1 control character other than newline and
//! tab, and DEL, as a visible escape (`\x1b`), through [`terminal_safe`]; nothing else is
//! changed or stripped. JSON output (`run --json`, `serve --jsonl`) keeps the exact text,
//! which JSON escapes itself.

use base64::Engine;
use code_mode_protocol::ContentItem;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Whether a character would drive a terminal: C0 controls other than newline and tab,
/// DEL, and the C1 controls (U+0080 to U+009F; a terminal may read U+009B as CSI).
fn is_terminal_control(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c)
}

/// `text` with every terminal control character shown as `\xNN` (see the module's
/// terminal policy). Borrowed when there is nothing to escape.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_terminal_control) {
        return Cow::Borrowed(text);
    }
    let mut safe = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_terminal_control(c) {
            let _ = write!(safe, "\\x{:02x}", u32::from(c));
        } else {
            safe.push(c);
        }
    }
    Cow::Owned(safe)
}

/// Prints items as they arrive: text as text, images and audio clips as a one-line
/// summary (saved to `save_dir` when given).
pub struct Printer {
    save_dir: Option<PathBuf>,
    saved: usize,
}

impl Printer {
    pub fn new(save_dir: Option<PathBuf>) -> Self {
        Self { save_dir, saved: 0 }
    }

    #[expect(clippy::print_stdout, reason = "the CLI's output is its stdout")]
    pub fn print(&mut self, item: &ContentItem) {
        match item {
            ContentItem::InputText { text } => println!("{}", terminal_safe(text)),
            ContentItem::InputImage { image_url, detail } => {
                let detail = format!(", detail {detail}");
                let summary = self.media_summary("image", image_url, &detail);
                println!("{}", terminal_safe(&summary));
            }
            ContentItem::InputAudio { audio_url } => {
                let summary = self.media_summary("audio", audio_url, "");
                println!("{}", terminal_safe(&summary));
            }
        }
    }

    /// `[image: image/png, 68 bytes, detail auto, saved to …]` for an image (`kind`),
    /// the same without a detail for an audio clip.
    fn media_summary(&mut self, kind: &str, url: &str, detail: &str) -> String {
        let Some((mime, data)) = parse_data_url(url) else {
            return format!("[{kind}: {} bytes of URL{detail}]", url.len());
        };
        let decoded = base64::engine::general_purpose::STANDARD.decode(data.trim());
        let mut summary = match &decoded {
            Ok(bytes) => format!("[{kind}: {mime}, {} bytes{detail}", bytes.len()),
            Err(_) => format!("[{kind}: {mime}, undecodable base64{detail}"),
        };
        if let (Some(dir), Ok(bytes)) = (&self.save_dir, decoded) {
            self.saved += 1;
            match save(dir, self.saved, &mime, &bytes) {
                Ok(path) => summary.push_str(&format!(", saved to {}", path.display())),
                Err(error) => summary.push_str(&format!(", not saved: {error}")),
            }
        }
        summary.push(']');
        summary
    }
}

/// `data:<mime>;base64,<data>` → (mime, data).
fn parse_data_url(url: &str) -> Option<(String, &str)> {
    let rest = url
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("data:"))
        .map(|_| &url[5..])?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    Some((
        if mime.is_empty() {
            "application/octet-stream".to_owned()
        } else {
            mime.to_owned()
        },
        data,
    ))
}

fn save(dir: &Path, index: usize, mime: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let extension = match mime {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/svg+xml" => "svg",
        "audio/wav" | "audio/x-wav" | "audio/wave" => "wav",
        "audio/mpeg" | "audio/mp3" => "mp3",
        "audio/ogg" => "ogg",
        "audio/flac" => "flac",
        "audio/webm" => "webm",
        _ => "bin",
    };
    let kind = if mime.starts_with("audio/") {
        "audio"
    } else {
        "image"
    };
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{kind}-{index}.{extension}"));
    std::fs::write(&path, bytes)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_shown_as_escapes_and_nothing_else_changes() {
        assert_eq!(
            terminal_safe("\x1b]0;pwned\x07\x1b[2J"),
            "\\x1b]0;pwned\\x07\\x1b[2J"
        );
        assert_eq!(
            terminal_safe("a\rb\u{7f}\u{9b}c\0"),
            "a\\x0db\\x7f\\x9bc\\x00"
        );
        let kept = "line 1\n\tindented \u{e9}\u{a0}\u{1f600} \\x1b";
        assert!(matches!(terminal_safe(kept), Cow::Borrowed(text) if text == kept));
    }
}
