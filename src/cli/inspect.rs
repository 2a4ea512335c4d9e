//! `pika diff` and `pika search`.

use serde_json::Value;

use super::{Api, Failure, Outcome, print_json, write_out};

/// Percent-encodes a query value.
pub(super) fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `pika diff PATH FROM [TO]`: the unified diff, as the node renders it.
pub fn diff(api: &Api, path: &str, from: u64, to: Option<u64>) -> Outcome {
    let to = to.map(|v| format!("&to={v}")).unwrap_or_default();
    let url = super::path_url("/api/v1/diff/", path)?;
    let body = api.get_bytes(&format!("{url}?from={from}{to}"))?;
    write_out(&body)
}

/// `pika search TEXT`: one line per hit, `path:line: snippet` (`path:`
/// for a match in the path). No hit: exit code 3.
pub fn search(
    api: &Api,
    as_json: bool,
    text: &str,
    prefix: Option<&str>,
    limit: Option<usize>,
) -> Outcome {
    let mut query = format!("/api/v1/search?q={}", encode(text));
    if let Some(p) = prefix {
        query.push_str(&format!("&prefix={}", encode(p)));
    }
    if let Some(l) = limit {
        query.push_str(&format!("&limit={l}"));
    }
    let found = api.get_json(&query)?;
    let hits = found["hits"].as_array().cloned().unwrap_or_default();
    if as_json {
        print_json(&found)?;
    } else {
        let mut out = String::new();
        for hit in &hits {
            let path = hit["path"].as_str().unwrap_or_default();
            let snippet = hit["snippet"].as_str().unwrap_or_default();
            match hit["line"].as_u64() {
                Some(line) => out.push_str(&format!("{path}:{line}: {snippet}\n")),
                None => out.push_str(&format!("{path}: (path)\n")),
            }
        }
        if found["truncated"] == Value::Bool(true) {
            out.push_str("(more hits: raise --limit)\n");
        }
        write_out(out.as_bytes())?;
    }
    if hits.is_empty() {
        return Err(Failure::new(3, format!("nothing matches {text:?}")));
    }
    Ok(())
}
