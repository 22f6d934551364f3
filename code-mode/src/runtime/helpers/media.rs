//! The helpers that output media: `image`, `generatedImage` and `audio` (contract
//! sections 2 and 8.1). Each accepts a `data:` URL, an object carrying one, or an MCP
//! content block, and reports one content item.

use super::{
    Fail, HelperResult, as_plain_object, emit, ensure_running, get, non_empty_string, output_room,
};
use crate::runtime::CellEvent;
use crate::runtime::state::StateRef;
use crate::runtime::values::{self, QUOTED_MAX_BYTES};
use base64::Engine;
use code_mode_protocol::texts::{
    self, AUDIO_EXPECTS, AUDIO_TOO_SHORT, DETAIL_ONE_OF, DETAIL_STRING, GENERATED_EXPECTS,
    GENERATED_HINT, IMAGE_EXPECTS, INVALID_AUDIO, INVALID_IMAGE, MCP_AUDIO_DATA, MCP_IMAGE_DATA,
    REMOTE_IMAGE,
};
use code_mode_protocol::{ContentItem, ImageDetail};

/// MIME type assumed for an MCP image block that does not name one.
const DEFAULT_MCP_IMAGE_MIME: &str = "image/png";

/// MIME type assumed for an MCP audio block that does not name one.
const DEFAULT_MCP_AUDIO_MIME: &str = "audio/wav";

/// A WAV clip shorter than this is replaced by [`AUDIO_TOO_SHORT`].
const SHORTEST_WAV_MS: f64 = 25.0;

/// Whether `url` starts with `data:`, in any case.
fn is_data_url(url: &str) -> bool {
    url.get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case("data:"))
}

/// The `data:` URL an MCP media block (`{ type, data, mimeType }`) stands for: `data` itself
/// when it already is one, else `data:<mimeType>;base64,<data>`.
fn block_url(
    scope: &v8::PinScope<'_, '_>,
    object: v8::Local<'_, v8::Object>,
    data: String,
    default_mime: &str,
) -> Result<String, Fail> {
    if is_data_url(&data) {
        return Ok(data);
    }
    let mime = get(scope, object, "mimeType")?;
    let mime = non_empty_string(scope, mime, QUOTED_MAX_BYTES);
    let mime = mime.as_deref().unwrap_or(default_mime);
    Ok(format!("data:{mime};base64,{data}"))
}

/// Validates a detail value given to `image`: `undefined`/`null` mean "not given".
fn parse_detail(
    scope: &v8::PinScope<'_, '_>,
    value: v8::Local<'_, v8::Value>,
) -> Result<Option<ImageDetail>, Fail> {
    if value.is_null_or_undefined() {
        return Ok(None);
    }
    if !value.is_string() {
        return Err(DETAIL_STRING.into());
    }
    let name = values::bounded_value_string(scope, value, QUOTED_MAX_BYTES).unwrap_or_default();
    ImageDetail::parse(&name)
        .map(Some)
        .ok_or_else(|| DETAIL_ONE_OF.into())
}

/// Checks an image URL: only `data:` URLs are accepted.
fn check_image_url(url: &str) -> HelperResult {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("http:") || lower.starts_with("https:") {
        return Err(REMOTE_IMAGE.into());
    }
    if !lower.starts_with("data:") {
        return Err(INVALID_IMAGE.into());
    }
    Ok(())
}

/// Reads the URL and the detail an `image(...)` argument carries.
fn image_source(
    scope: &v8::PinScope<'_, '_>,
    value: v8::Local<'_, v8::Value>,
    state: &StateRef,
) -> Result<(String, Option<ImageDetail>), Fail> {
    if value.is_string() {
        let url =
            non_empty_string(scope, value, output_room(state)).ok_or(Fail::from(IMAGE_EXPECTS))?;
        return Ok((url, None));
    }
    let Some(object) = as_plain_object(value) else {
        return Err(IMAGE_EXPECTS.into());
    };
    let image_url = get(scope, object, "image_url")?;
    if !image_url.is_undefined() {
        let url = non_empty_string(scope, image_url, output_room(state))
            .ok_or(Fail::from(IMAGE_EXPECTS))?;
        let detail = parse_detail(scope, get(scope, object, "detail")?)?;
        return Ok((url, detail));
    }
    let kind = get(scope, object, "type")?;
    if kind.is_undefined() {
        return Err(IMAGE_EXPECTS.into());
    }
    let kind = values::string_conversion(scope, kind, QUOTED_MAX_BYTES).ok_or(Fail::Pending)?;
    if kind != "image" {
        return Err(Fail::Throw(texts::image_only_accepts(&kind)));
    }
    let data = get(scope, object, "data")?;
    let data =
        non_empty_string(scope, data, output_room(state)).ok_or(Fail::from(MCP_IMAGE_DATA))?;
    let url = block_url(scope, object, data, DEFAULT_MCP_IMAGE_MIME)?;
    let meta = get(scope, object, "_meta")?;
    let detail = match as_plain_object(meta) {
        Some(meta) => parse_detail(scope, get(scope, meta, "codex/imageDetail")?)?,
        None => None,
    };
    Ok((url, detail))
}

helper! {
    image_helper, |scope, args, _rv, state| {
        let (image_url, item_detail) = image_source(scope, args.get(0), state)?;
        let detail = parse_detail(scope, args.get(1))?.or(item_detail);
        check_image_url(&image_url)?;
        let item = ContentItem::InputImage {
            image_url,
            detail: detail.unwrap_or_default(),
        };
        emit(state, CellEvent::Output(item))
    }
}

helper! {
    generated_image_helper, |scope, args, _rv, state| {
        let object = as_plain_object(args.get(0)).ok_or(Fail::from(GENERATED_EXPECTS))?;
        let image_url = get(scope, object, "image_url")?;
        let image_url = non_empty_string(scope, image_url, output_room(state))
            .ok_or(Fail::from(GENERATED_EXPECTS))?;
        let hint = get(scope, object, "output_hint")?;
        let hint = if hint.is_null_or_undefined() {
            None
        } else if let Some(hint) = values::bounded_value_string(scope, hint, output_room(state)) {
            Some(hint)
        } else {
            return Err(GENERATED_HINT.into());
        };
        check_image_url(&image_url)?;
        ensure_running(state)?;
        let item = ContentItem::InputImage {
            image_url,
            detail: ImageDetail::default(),
        };
        emit(state, CellEvent::Output(item))?;
        match hint {
            Some(hint) if !hint.is_empty() => {
                emit(state, CellEvent::Output(ContentItem::text(hint)))
            }
            _ => Ok(()),
        }
    }
}

/// Reads the URL an `audio(...)` argument carries.
fn audio_source(
    scope: &v8::PinScope<'_, '_>,
    value: v8::Local<'_, v8::Value>,
    state: &StateRef,
) -> Result<String, Fail> {
    if value.is_string() {
        return non_empty_string(scope, value, output_room(state)).ok_or(AUDIO_EXPECTS.into());
    }
    let Some(object) = as_plain_object(value) else {
        return Err(AUDIO_EXPECTS.into());
    };
    let audio_url = get(scope, object, "audio_url")?;
    if !audio_url.is_undefined() {
        return non_empty_string(scope, audio_url, output_room(state)).ok_or(AUDIO_EXPECTS.into());
    }
    let kind = get(scope, object, "type")?;
    if kind.is_undefined() {
        return Err(AUDIO_EXPECTS.into());
    }
    let kind = values::string_conversion(scope, kind, QUOTED_MAX_BYTES).ok_or(Fail::Pending)?;
    if kind != "audio" {
        return Err(Fail::Throw(texts::audio_only_accepts(&kind)));
    }
    let data = get(scope, object, "data")?;
    let data =
        non_empty_string(scope, data, output_room(state)).ok_or(Fail::from(MCP_AUDIO_DATA))?;
    block_url(scope, object, data, DEFAULT_MCP_AUDIO_MIME)
}

helper! {
    audio_helper, |scope, args, _rv, state| {
        let audio_url = audio_source(scope, args.get(0), state)?;
        if !is_data_url(&audio_url) {
            return Err(INVALID_AUDIO.into());
        }
        ensure_running(state)?;
        let item = if wav_duration_ms(&audio_url).is_some_and(|ms| ms < SHORTEST_WAV_MS) {
            ContentItem::text(AUDIO_TOO_SHORT)
        } else {
            ContentItem::InputAudio { audio_url }
        };
        emit(state, CellEvent::Output(item))
    }
}

/// Base64 characters decoded to find a WAV clip's header: its `fmt ` chunk and the start of
/// its `data` chunk are within the first bytes of any clip a tool writes.
const WAV_HEADER_BASE64: usize = 4096;

/// The length in milliseconds of the WAV clip a `data:audio/wav;base64,` URL holds, or
/// `None` when the URL is no base64 WAV clip whose header can be read. The length is the
/// `data` chunk's size (or the bytes the URL really carries, when fewer) over the byte
/// rate of the `fmt ` chunk. Only the header is decoded.
fn wav_duration_ms(url: &str) -> Option<f64> {
    let (meta, data) = url.get(5..)?.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?.to_ascii_lowercase();
    if !matches!(mime.as_str(), "audio/wav" | "audio/x-wav" | "audio/wave") {
        return None;
    }
    let prefix = if data.len() <= WAV_HEADER_BASE64 {
        data
    } else {
        data.get(..WAV_HEADER_BASE64)?
    };
    let header = base64::engine::general_purpose::STANDARD
        .decode(prefix)
        .ok()?;
    let total_bytes = data.trim_end_matches('=').len() * 3 / 4;
    if header.get(..4)? != b"RIFF" || header.get(8..12)? != b"WAVE" {
        return None;
    }
    let read_u32 = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(header.get(at..at + 4)?.try_into().ok()?))
    };
    let mut byte_rate = None;
    let mut at = 12;
    while at + 8 <= header.len() {
        let id = header.get(at..at + 4)?;
        let size = read_u32(at + 4)?;
        let body = at + 8;
        if id == b"fmt " {
            byte_rate = Some(read_u32(body + 8)?);
        } else if id == b"data" {
            let byte_rate = f64::from(byte_rate.filter(|rate| *rate > 0)?);
            let carried = total_bytes.saturating_sub(body);
            let bytes = (size as usize).min(carried);
            return Some(bytes as f64 * 1000.0 / byte_rate);
        }
        // Chunks are padded to an even size.
        at = body
            .checked_add(size as usize)?
            .checked_add(size as usize % 2)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::wav_duration_ms;
    use base64::Engine;

    /// A PCM WAV clip of `samples` 16-bit mono samples at 8 kHz (16 000 bytes a second).
    fn wav(samples: usize) -> String {
        let data_bytes = (samples * 2) as u32;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"RIFF");
        bytes.extend_from_slice(&(36 + data_bytes).to_le_bytes());
        bytes.extend_from_slice(b"WAVEfmt ");
        bytes.extend_from_slice(&16u32.to_le_bytes());
        bytes.extend_from_slice(&1u16.to_le_bytes()); // PCM
        bytes.extend_from_slice(&1u16.to_le_bytes()); // mono
        bytes.extend_from_slice(&8000u32.to_le_bytes());
        bytes.extend_from_slice(&16000u32.to_le_bytes());
        bytes.extend_from_slice(&2u16.to_le_bytes());
        bytes.extend_from_slice(&16u16.to_le_bytes());
        bytes.extend_from_slice(b"data");
        bytes.extend_from_slice(&data_bytes.to_le_bytes());
        bytes.resize(bytes.len() + data_bytes as usize, 0);
        let data = base64::engine::general_purpose::STANDARD.encode(bytes);
        format!("data:audio/wav;base64,{data}")
    }

    #[test]
    fn a_clip_is_measured_by_its_data_chunk_and_byte_rate() {
        assert_eq!(wav_duration_ms(&wav(80)), Some(10.0));
        assert_eq!(wav_duration_ms(&wav(8000)), Some(1000.0));
        assert_eq!(wav_duration_ms(&wav(199)), Some(24.875));
    }

    #[test]
    fn a_header_that_claims_more_than_the_url_carries_counts_what_it_carries() {
        let url = wav(8000);
        // Keep the 44-byte header and 16 bytes of samples: 1 ms.
        let cut = &url[..url.find(',').unwrap() + 1 + 80];
        assert_eq!(wav_duration_ms(cut), Some(1.0));
    }

    #[test]
    fn anything_else_has_no_duration() {
        assert_eq!(wav_duration_ms("data:audio/mpeg;base64,AAAA"), None);
        assert_eq!(wav_duration_ms("data:audio/wav;base64,not base64!"), None);
        assert_eq!(
            wav_duration_ms("data:audio/wav;base64,AAAAAAAAAAAAAAAA"),
            None
        );
        assert_eq!(wav_duration_ms("data:audio/wav,RIFF"), None);
    }
}
