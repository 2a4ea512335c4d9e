//! [`Api`]: one node's HTTP API as the commands use it, its answers
//! turned into [`Failure`]s with the CLI's exit codes.

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use serde_json::Value;

use super::{Client, Failure, Outcome};

/// One node's HTTP API.
pub(super) struct Api {
    pub(super) base: String,
    pub(super) http: reqwest::blocking::Client,
}

impl Api {
    pub(super) fn new(client: &Client, token: Option<String>) -> Result<Self, Failure> {
        let base = client.node.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(Failure::new(
                2,
                format!("--node must be an http:// URL, got {base:?}"),
            ));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Failure::new(2, "the token holds characters a header cannot"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        // reqwest is built without a crypto provider of its own.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::blocking::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            // Writes wait for the cluster; watches never end.
            .timeout(None);
        if let Some(file) = &client.ca_file {
            let pem = std::fs::read(file)
                .map_err(|e| Failure::new(2, format!("--ca-file {}: {e}", file.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Failure::new(
                    2,
                    format!("--ca-file {}: not PEM certificates: {e}", file.display()),
                )
            })?;
            if certs.is_empty() {
                return Err(Failure::new(
                    2,
                    format!("--ca-file {} holds no certificate", file.display()),
                ));
            }
            builder = builder.tls_certs_only(certs);
        }
        if client.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| Failure::new(1, format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { base, http })
    }

    pub(super) fn unreachable(&self, e: reqwest::Error) -> Failure {
        // reqwest's Display stops at "error sending request"; the cause
        // (refused, certificate not trusted, ...) is what helps.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        Failure::new(5, format!("cannot reach {}: {text}", self.base))
    }

    pub(super) fn get_json(&self, path: &str) -> Result<Value, Failure> {
        self.send("GET", path, None)
    }

    /// A GET whose 2xx body is returned as it came.
    pub(super) fn get_bytes(&self, path: &str) -> Result<Vec<u8>, Failure> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().map_err(|e| self.unreachable(e))?;
        if !(200..300).contains(&status) {
            return Err(Failure::from_status(status, &bytes));
        }
        Ok(bytes.to_vec())
    }

    /// Sends a request; a 2xx body is returned as JSON (null when empty).
    pub(super) fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "POST" => self.http.post(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.get(url),
        };
        let request = match body {
            Some(b) => request.json(b),
            None => request,
        };
        let response = request.send().map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().map_err(|e| self.unreachable(e))?;
        if !(200..300).contains(&status) {
            return Err(Failure::from_status(status, &bytes));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Failure::new(1, format!("the node sent invalid JSON: {e}")))
    }

    pub(super) fn watch(&self, prefix: &str, from: Option<u64>, as_json: bool) -> Outcome {
        let mut request = self
            .http
            .get(format!("{}/api/v1/watch", self.base))
            .query(&[("prefix", prefix)]);
        if let Some(from) = from {
            request = request.query(&[("from_revision", from)]);
        }
        let response = request.send().map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.bytes().unwrap_or_default();
            return Err(Failure::from_status(status, &body));
        }
        let mut name = String::new();
        for line in BufReader::new(response).lines() {
            let line = line.map_err(|e| Failure::new(5, format!("the watch broke: {e}")))?;
            if let Some(event) = line.strip_prefix("event:") {
                name = event.trim().to_string();
            } else if let Some(data) = line.strip_prefix("data:") {
                let data: Value = serde_json::from_str(data.trim())
                    .map_err(|e| Failure::new(1, format!("the node sent a bad event: {e}")))?;
                // The events that end a watch, each with its exit code
                // (the module docs); change events carry no name.
                let ends = match name.as_str() {
                    "compacted" => Some((6, "the node no longer keeps the history asked for")),
                    "unauthorized" => Some((7, "the token no longer authorizes the watch")),
                    "unavailable" => Some((5, "the node may not serve reads now")),
                    _ => None,
                };
                if let Some((code, fallback)) = ends {
                    let message = data["message"].as_str().unwrap_or(fallback);
                    return Err(Failure::new(code, message.to_string()));
                }
                let printed = if as_json {
                    writeln!(std::io::stdout(), "{data}")
                } else {
                    writeln!(
                        std::io::stdout(),
                        "{} {:<6} {} v{} (epoch {})",
                        data["revision"],
                        data["op"].as_str().unwrap_or("?"),
                        data["path"].as_str().unwrap_or("?"),
                        data["version"],
                        data["epoch"]
                    )
                };
                printed
                    .and_then(|()| std::io::stdout().flush())
                    .map_err(|e| Failure::new(1, format!("cannot write to stdout: {e}")))?;
            } else if line.is_empty() {
                name.clear();
            }
        }
        Err(Failure::new(5, "the node closed the watch"))
    }
}
