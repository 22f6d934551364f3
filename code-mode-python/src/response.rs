//! A cell's answer as it crosses to Python, typed: [`NativeResponse`] (`_native.Response`:
//! the cell's id, its kind, its content items, its failure, the wall time and the text a
//! model reads of it) and [`NativeItem`] (`_native.Item`: one content item), built from the
//! protocol's [`CellResponse`] and the formatter's model text. Their fields carry what the
//! shared JSON form (`code_mode_surface::json::response_json`) carries, under its names.

use code_mode_protocol::{CellResponse, ContentItem};
use code_mode_surface::format_response;
use pyo3::prelude::*;

/// One content item: `kind` is `input_text` (with `text`), `input_image` (with `image_url`
/// and `detail`) or `input_audio` (with `audio_url`); the fields of the other kinds are
/// `None`.
#[pyclass(module = "code_mode._native", name = "Item", frozen, get_all)]
#[derive(Debug, Clone, PartialEq)]
pub struct NativeItem {
    kind: String,
    text: Option<String>,
    image_url: Option<String>,
    detail: Option<String>,
    audio_url: Option<String>,
}

impl NativeItem {
    fn of(item: &ContentItem) -> Self {
        let empty = |kind: &str| Self {
            kind: kind.to_owned(),
            text: None,
            image_url: None,
            detail: None,
            audio_url: None,
        };
        match item {
            ContentItem::InputText { text } => Self {
                text: Some(text.clone()),
                ..empty("input_text")
            },
            ContentItem::InputImage { image_url, detail } => Self {
                image_url: Some(image_url.clone()),
                detail: Some(detail.as_str().to_owned()),
                ..empty("input_image")
            },
            ContentItem::InputAudio { audio_url } => Self {
                audio_url: Some(audio_url.clone()),
                ..empty("input_audio")
            },
        }
    }

    fn list(items: &[ContentItem]) -> Vec<Self> {
        items.iter().map(Self::of).collect()
    }
}

#[pymethods]
impl NativeItem {
    fn __repr__(&self) -> String {
        format!("{self:?}")
    }
}

/// What one observation of a cell answered (an `exec`, `wait` or `terminate`): `kind` is
/// `result` (the cell ended), `yielded` (it goes on) or `terminated`; `error_text` and
/// `failure` (`script_error`, `cpu_budget`, ...) say how a result failed, `missing_cell`
/// whether the id named no cell; `wall_time_ms` is the provider's time for the observation;
/// `model_items` the answer as a model reads it (cut to the exec's `max_output_tokens`).
#[pyclass(module = "code_mode._native", name = "Response", frozen, get_all)]
#[derive(Debug, Clone, PartialEq)]
pub struct NativeResponse {
    cell_id: String,
    kind: String,
    content_items: Vec<NativeItem>,
    error_text: Option<String>,
    failure: Option<String>,
    missing_cell: bool,
    wall_time_ms: f64,
    model_items: Vec<NativeItem>,
}

impl NativeResponse {
    /// `response` as Python reads it, its model text cut to `budget` tokens.
    pub(crate) fn new(response: &CellResponse, budget: u64) -> Self {
        let kind = match response {
            CellResponse::Result { .. } => "result",
            CellResponse::Yielded { .. } => "yielded",
            CellResponse::Terminated { .. } => "terminated",
        };
        Self {
            cell_id: response.cell_id().to_string(),
            kind: kind.to_owned(),
            content_items: NativeItem::list(response.content_items()),
            error_text: response.error_text().map(str::to_owned),
            failure: response
                .failure()
                .map(|failure| failure.as_str().to_owned()),
            missing_cell: response.is_missing_cell(),
            // To the microsecond, as the JSON form's.
            wall_time_ms: (response.wall_time().as_micros() as f64) / 1000.0,
            model_items: NativeItem::list(&format_response(response, budget)),
        }
    }
}

#[pymethods]
impl NativeResponse {
    fn __repr__(&self) -> String {
        format!("{self:?}")
    }
}
