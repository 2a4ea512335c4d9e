//! Content formats and their validation.
//!
//! A config is stored as bytes plus a declared format. Saving checks that the
//! bytes parse in that format, so a reader never receives a YAML file that
//! does not parse; the error names the line and column, as an editor would.

use std::fmt;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// The declared format of a config's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Yaml,
    Toml,
    #[default]
    Text,
    /// Bytes with no declared structure (a value written through the
    /// Consul API that is not UTF-8): never validated, never edited in the
    /// UI. Last, so records written before it decode unchanged.
    Binary,
}

/// Content that does not parse in its declared format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {format} at line {line}, column {column}: {message}")]
pub struct ContentError {
    pub format: Format,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    pub message: String,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Yaml => "yaml",
            Format::Toml => "toml",
            Format::Text => "text",
            Format::Binary => "binary",
        }
    }

    /// The `Content-Type` a raw read of this format is served with.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Yaml => "application/yaml",
            Format::Toml => "application/toml",
            Format::Text => "text/plain; charset=utf-8",
            Format::Binary => "application/octet-stream",
        }
    }

    /// Checks that `data` parses as this format. Every format but
    /// [`Format::Binary`] must be UTF-8.
    ///
    /// ```
    /// use pika_replication::Format;
    ///
    /// assert!(Format::Yaml.validate(b"port: 8080\n").is_ok());
    /// let e = Format::Json.validate(b"{\n  \"port\": }").unwrap_err();
    /// assert_eq!((e.line, e.column), (2, 11));
    /// ```
    pub fn validate(self, data: &[u8]) -> Result<(), ContentError> {
        if self == Format::Binary {
            return Ok(());
        }
        let text = std::str::from_utf8(data).map_err(|e| {
            let (line, column) = line_column(data, e.valid_up_to());
            self.error(line, column, "content is not valid UTF-8")
        })?;
        match self {
            Format::Text | Format::Binary => Ok(()),
            Format::Json => serde_json::from_str::<IgnoredAny>(text)
                .map(drop)
                .map_err(|e| {
                    // serde_json's Display repeats the position; keep only the cause.
                    let message = e.to_string();
                    let message = message.split(" at line ").next().unwrap_or(&message);
                    self.error(e.line(), e.column(), message)
                }),
            Format::Yaml => {
                // A config file may hold several `---` documents; each must parse.
                for document in serde_norway::Deserializer::from_str(text) {
                    if let Err(e) = IgnoredAny::deserialize(document) {
                        let (line, column) = e
                            .location()
                            .map(|l| (l.line(), l.column()))
                            .unwrap_or((1, 1));
                        let message = e.to_string();
                        let message = message.split(" at line ").next().unwrap_or(&message);
                        return Err(self.error(line, column, message));
                    }
                }
                Ok(())
            }
            Format::Toml => toml::from_str::<toml::Table>(text).map(drop).map_err(|e| {
                let (line, column) = e
                    .span()
                    .map(|span| line_column(data, span.start))
                    .unwrap_or((1, 1));
                self.error(line, column, e.message())
            }),
        }
    }

    fn error(self, line: usize, column: usize, message: &str) -> ContentError {
        ContentError {
            format: self,
            line,
            column,
            message: message.trim().to_string(),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(data: &[u8], offset: usize) -> (usize, usize) {
    let before = &data[..offset.min(data.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_content_passes() {
        assert!(Format::Json.validate(br#"{"a": [1, 2]}"#).is_ok());
        assert!(
            Format::Yaml
                .validate(b"a: 1\nb: [x, y]\n---\nc: 2\n")
                .is_ok()
        );
        assert!(Format::Yaml.validate(b"").is_ok());
        assert!(Format::Toml.validate(b"[server]\nport = 8080\n").is_ok());
        assert!(Format::Text.validate("any text ✓".as_bytes()).is_ok());
        assert!(Format::Binary.validate(b"\x00\xff\xfe").is_ok());
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = Format::Json
            .validate(b"{\n  \"a\": 1,\n  \"b\": }\n")
            .unwrap_err();
        assert_eq!((e.line, e.column), (3, 8), "{e}");

        let e = Format::Yaml
            .validate(b"a: 1\nb: [1, 2\nc: 3\n")
            .unwrap_err();
        assert!(e.line >= 2, "{e}");

        let e = Format::Yaml.validate(b"a: 1\n---\nb: : :\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");

        let e = Format::Toml.validate(b"a = 1\nb = = 2\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");

        let e = Format::Text.validate(b"ok\nbad \xff").unwrap_err();
        assert_eq!((e.line, e.column), (2, 5), "{e}");
        assert!(
            e.to_string()
                .starts_with("invalid text at line 2, column 5")
        );
    }
}
