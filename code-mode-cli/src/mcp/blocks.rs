//! The formatter's items as MCP content blocks: one definition for `exec` and `wait`
//! results and the results of MCP tasks.

use code_mode_protocol::ContentItem;
use rmcp::model::ContentBlock;

/// The formatter's items as MCP content, a block each and in order (contract §1: what the
/// agent core shows the model): the header (status, wall time, `Output:`), each item the
/// cell wrote, then `Script error:` with the error text; images and audio clips as image and
/// audio blocks (their data URLs split into data and MIME type).
pub(super) fn content(items: &[ContentItem]) -> Vec<ContentBlock> {
    items
        .iter()
        .map(|item| match item {
            ContentItem::InputText { text } => ContentBlock::text(text.clone()),
            ContentItem::InputImage { image_url, .. } => {
                media_block(image_url, "image", ContentBlock::image)
            }
            ContentItem::InputAudio { audio_url } => {
                media_block(audio_url, "audio", ContentBlock::audio)
            }
        })
        .collect()
}

/// A `data:<mime>;base64,<data>` URL as the block `block` makes of its data and MIME
/// type; anything else as a text block naming the `kind` and the URL.
fn media_block(url: &str, kind: &str, block: fn(String, String) -> ContentBlock) -> ContentBlock {
    let parsed = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(','))
        .and_then(|(header, data)| {
            let mime = header.strip_suffix(";base64")?;
            Some((mime, data))
        });
    match parsed {
        Some((mime, data)) => block(data.to_owned(), mime.to_owned()),
        None => ContentBlock::text(format!("[{kind}: {url}]")),
    }
}
