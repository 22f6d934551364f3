//! Where spans go and what they may hold: from a front's flags or from the standard
//! OpenTelemetry environment variables.

use crate::TraceError;
use std::net::SocketAddr;

/// The OTLP encodings over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf`: the OpenTelemetry default, what most collectors (Phoenix among
    /// them) take.
    HttpProtobuf,
    /// `http/json`: what Codex's host sends to `--otel-trace-exporter`.
    HttpJson,
}

impl std::str::FromStr for Protocol {
    type Err = TraceError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim() {
            "http/protobuf" => Ok(Self::HttpProtobuf),
            "http/json" => Ok(Self::HttpJson),
            "grpc" => Err(TraceError::Settings(
                "OTLP over gRPC is not supported here: set OTEL_EXPORTER_OTLP_PROTOCOL to http/protobuf (the default) or http/json, and the endpoint to the collector's HTTP port (4318)".to_owned(),
            )),
            other => Err(TraceError::Settings(format!(
                "unknown OTLP protocol `{other}`: use http/protobuf or http/json"
            ))),
        }
    }
}

/// Where spans go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// OTLP over HTTP to this URL, used as given (a full path such as
    /// `http://127.0.0.1:4318/v1/traces`).
    Otlp {
        endpoint: String,
        protocol: Protocol,
    },
    /// Raw OTLP JSON batches to every WebSocket client of this address.
    WebSocket(SocketAddr),
}

impl Destination {
    /// `--otel-trace-listen ws://IP:PORT`, as Codex's host takes it.
    pub fn websocket(url: &str) -> Result<Self, TraceError> {
        let rest = url.strip_prefix("ws://").ok_or_else(|| {
            TraceError::Settings(format!(
                "--otel-trace-listen takes ws://IP:PORT, not `{url}`"
            ))
        })?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let address: std::net::SocketAddr = rest.parse().map_err(|_| {
            TraceError::Settings(format!(
                "--otel-trace-listen takes ws://IP:PORT with a numeric IP, not `{url}`"
            ))
        })?;
        // The stream authenticates no one and its spans name sessions and tools: it is for
        // this machine only.
        if !address.ip().is_loopback() {
            return Err(TraceError::Settings(format!(
                "--otel-trace-listen serves spans to anyone who connects, so it listens on a loopback address only (ws://127.0.0.1:PORT), not `{url}`; send traces off the machine with --otel-trace-exporter"
            )));
        }
        Ok(Self::WebSocket(address))
    }

    /// `--otel-trace-exporter URL`: OTLP/HTTP JSON to that URL, as Codex's host sends it.
    pub fn otlp_json(url: &str) -> Result<Self, TraceError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(TraceError::Settings(format!(
                "--otel-trace-exporter takes an http:// or https:// URL, not `{url}`"
            )));
        }
        Ok(Self::Otlp {
            endpoint: url.to_owned(),
            protocol: Protocol::HttpJson,
        })
    }
}

/// Whether spans may hold what a model wrote. Off by default: no source, no arguments,
/// no output in any span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capture {
    /// The cell's source, capped ([`crate::captured`]).
    pub source: bool,
    /// Each nested call's arguments, capped likewise.
    pub arguments: bool,
}

impl Capture {
    /// `--trace-capture source,arguments` (either or both; `none` for neither).
    pub fn parse(value: &str) -> Result<Self, TraceError> {
        let mut capture = Self::default();
        for part in value
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            match part {
                "source" => capture.source = true,
                "arguments" => capture.arguments = true,
                "none" => {}
                other => {
                    return Err(TraceError::Settings(format!(
                        "unknown trace capture `{other}`: use source, arguments or none"
                    )));
                }
            }
        }
        Ok(capture)
    }
}

/// How a process exports its traces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    pub destination: Destination,
    /// `service.name` of the resource.
    pub service_name: String,
    /// `service.version` of the resource.
    pub service_version: String,
    /// More resource attributes (Codex's host adds `env = code-mode-host`).
    pub resource: Vec<(String, String)>,
    /// The instrumentation scope's name.
    pub scope: String,
    pub capture: Capture,
}

impl TraceSettings {
    /// Settings for `destination`, named `service` (also the scope) at `version`.
    pub fn new(destination: Destination, service: &str, version: &str) -> Self {
        Self {
            destination,
            service_name: service.to_owned(),
            service_version: version.to_owned(),
            resource: Vec::new(),
            scope: service.to_owned(),
            capture: Capture::default(),
        }
    }

    /// What the standard environment asks for, or `None` when it asks for no traces:
    /// - the endpoint: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as given, else
    ///   `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces` added; neither set means no traces,
    ///   and so does `OTEL_TRACES_EXPORTER=none`;
    /// - the encoding: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else
    ///   `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf`;
    /// - `service.name`: `OTEL_SERVICE_NAME`, else `service`.
    pub fn from_env(service: &str, version: &str) -> Result<Option<Self>, TraceError> {
        Self::from_lookup(service, version, |name| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
        })
    }

    /// [`Self::from_env`] over any variable lookup.
    pub fn from_lookup(
        service: &str,
        version: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TraceError> {
        if lookup("OTEL_TRACES_EXPORTER").is_some_and(|value| value.trim() == "none") {
            return Ok(None);
        }
        let endpoint = match lookup("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(endpoint) => endpoint,
            None => match lookup("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(base) => format!("{}/v1/traces", base.trim_end_matches('/')),
                None => return Ok(None),
            },
        };
        let protocol = match lookup("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| lookup("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            Some(protocol) => protocol.parse()?,
            None => Protocol::HttpProtobuf,
        };
        let name = lookup("OTEL_SERVICE_NAME").unwrap_or_else(|| service.to_owned());
        let mut settings = Self::new(Destination::Otlp { endpoint, protocol }, &name, version);
        settings.scope = service.to_owned();
        Ok(Some(settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        }
    }

    #[test]
    fn no_endpoint_means_no_traces() {
        assert_eq!(
            TraceSettings::from_lookup("code-mode", "1", env(&[])).unwrap(),
            None
        );
        let off = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ]);
        assert_eq!(
            TraceSettings::from_lookup("code-mode", "1", off).unwrap(),
            None
        );
    }

    #[test]
    fn the_base_endpoint_gets_the_traces_path_and_the_signal_endpoint_is_kept() {
        let base = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318/")]);
        let settings = TraceSettings::from_lookup("code-mode", "1", base)
            .unwrap()
            .unwrap();
        assert_eq!(
            settings.destination,
            Destination::Otlp {
                endpoint: "http://x:4318/v1/traces".to_owned(),
                protocol: Protocol::HttpProtobuf
            }
        );
        assert_eq!(settings.service_name, "code-mode");
        let signal = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://wrong:1"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://y:9/traces"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "agent-runtime"),
        ]);
        let settings = TraceSettings::from_lookup("code-mode", "1", signal)
            .unwrap()
            .unwrap();
        assert_eq!(
            settings.destination,
            Destination::Otlp {
                endpoint: "http://y:9/traces".to_owned(),
                protocol: Protocol::HttpJson
            }
        );
        assert_eq!(
            (settings.service_name.as_str(), settings.scope.as_str()),
            ("agent-runtime", "code-mode")
        );
    }

    #[test]
    fn grpc_and_unknown_protocols_are_refused_with_the_fix() {
        let grpc = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        let error = TraceSettings::from_lookup("code-mode", "1", grpc).unwrap_err();
        assert!(error.to_string().contains("http/protobuf"), "{error}");
        assert!("thrift".parse::<Protocol>().is_err());
    }

    #[test]
    fn flags_take_codex_forms_only() {
        assert_eq!(
            Destination::websocket("ws://127.0.0.1:0").unwrap(),
            Destination::WebSocket("127.0.0.1:0".parse().unwrap())
        );
        assert!(Destination::websocket("http://127.0.0.1:1").is_err());
        assert!(Destination::websocket("ws://localhost:1").is_err());
        let refused = Destination::websocket("ws://0.0.0.0:4319").unwrap_err();
        assert!(refused.to_string().contains("loopback"), "{refused}");
        assert!(Destination::websocket("ws://[::1]:4319").is_ok());
        assert!(Destination::otlp_json("127.0.0.1:4318").is_err());
        assert_eq!(
            Capture::parse("source, arguments").unwrap(),
            Capture {
                source: true,
                arguments: true
            }
        );
        assert!(Capture::parse("output").is_err());
    }
}
