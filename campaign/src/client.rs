//! A campaign client: random reads and writes on a few shared paths, each
//! recorded with its invocation and answer, through pika's API or Consul's;
//! writes whose outcome is unknown retried with their request id, and some
//! acknowledged ones sent again later (a resend must be answered alike).
//!
//! Only an answer that never came (timeout, refused or cut connection) and
//! a 503 or 504 leave an outcome unknown: a 503 is the server's "outcome
//! unknown" (`src/api/error.rs`: no leader, no quorum, leadership lost). Any
//! other status the API does not give to that call (a 400, 401, 403, 413,
//! 500, a 404 to a put...) is [`Unexpected`]: the round fails with its
//! status and body rather than count it as "may have happened", which the
//! checker accepts from anything.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use pika_replication::dice::Dice;

use crate::linearizability::{Call, Operation, Outcome};

/// Every client's operations, by path.
pub(crate) type History = Arc<Mutex<BTreeMap<String, Vec<Operation>>>>;

/// Each node's API address as the round knows it now: a node that moved
/// (`Fault::Relocate`) is found at its new one, as clients behind a DNS
/// name or a service would find it.
pub(crate) type Urls = Arc<std::sync::RwLock<Vec<String>>>;

/// What the campaign reads of an answer: its status, the version and term
/// of a change (`X-Pika-Version`, `X-Pika-Epoch`), and its body.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) version: Option<u64>,
    pub(crate) epoch: Option<u64>,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    /// `None` when there was no whole answer (timeout, refused connection,
    /// a body cut off): the request may or may not have been applied.
    fn of(response: reqwest::Result<reqwest::blocking::Response>) -> Option<Answer> {
        let response = response.ok()?;
        let header = |name: &str| -> Option<u64> {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        let (version, epoch) = (header("x-pika-version"), header("x-pika-epoch"));
        let status = response.status().as_u16();
        // A body that breaks off is a transport failure like a timeout,
        // not an empty answer: reading it as JSON `null` once made a 201
        // count as a write of version 0.
        let body = response.bytes().ok()?.to_vec();
        Some(Answer {
            status,
            version,
            epoch,
            body,
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// What an answer the campaign cannot use says, for the report.
    fn unexpected(&self, why: &str) -> Unexpected {
        const SHOWN: usize = 400;
        let text = String::from_utf8_lossy(&self.body);
        let body = match text.char_indices().nth(SHOWN) {
            Some((cut, _)) => format!("{}...", &text[..cut]),
            None => text.into_owned(),
        };
        Unexpected {
            status: self.status,
            why: why.to_string(),
            body,
        }
    }
}

/// What one answer told, in the checker's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Told {
    pub(crate) outcome: Outcome,
    /// For an acknowledged write: the term that acknowledged it.
    pub(crate) epoch: Option<u64>,
    /// For a native put acknowledged with a 201: the revision its body
    /// names (deletes and the Consul API answer none).
    pub(crate) revision: Option<u64>,
}

impl Told {
    /// No answer, or one that says the outcome is unknown.
    pub(crate) fn unknown() -> Told {
        Told::of(Outcome::Unknown)
    }

    fn of(outcome: Outcome) -> Told {
        Told {
            outcome,
            epoch: None,
            revision: None,
        }
    }
}

/// An answer the API does not give to that call in a cluster that works
/// as documented, or one missing what its status promises: a harness or
/// protocol error, never an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unexpected {
    pub(crate) status: u16,
    why: String,
    body: String,
}

impl std::fmt::Display for Unexpected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}), body {:?}", self.status, self.why, self.body)
    }
}

/// Statuses that leave an outcome unknown: 503 is the server's "outcome
/// unknown, retry" (`WriteError::Unavailable` and `Closed`, and a write
/// not committed within `forward_timeout`); 504 is what a gateway says of
/// an upstream that did not answer in time.
fn ambiguous(status: u16) -> bool {
    matches!(status, 503 | 504)
}

/// Whether a call can go through the Consul KV API: a read, or a write
/// unguarded or guarded by "must not exist" (`?cas=0`). A guard on a
/// version has no Consul equivalent (Consul's `cas` is an index).
fn consul_can(call: &Call) -> bool {
    match call {
        Call::Read => true,
        Call::Put { expected, .. } | Call::Delete { expected } => {
            matches!(expected, None | Some(0))
        }
    }
}

/// A call through the Consul KV API, in the checker's terms.
fn perform_consul(
    http: &reqwest::blocking::Client,
    url: &str,
    path: &str,
    call: &Call,
) -> Result<Told, Unexpected> {
    let target = format!("{url}/v1/kv/{path}");
    let cas = |expected: &Option<u64>| match expected {
        Some(0) => "?cas=0",
        _ => "",
    };
    let response = match call {
        Call::Read => http.get(&target).send(),
        Call::Put { value, expected } => http
            .put(format!("{target}{}", cas(expected)))
            .body(value.clone())
            .send(),
        Call::Delete { expected } => http.delete(format!("{target}{}", cas(expected))).send(),
    };
    match Answer::of(response) {
        None => Ok(Told::unknown()),
        Some(answer) => classify_consul(call, &answer),
    }
}

/// A Consul KV answer in the checker's terms. A read answers 200 with the
/// pair and `X-Pika-Version`, or 404. A change answers `true` with
/// `X-Pika-Version` and `X-Pika-Epoch`; a delete of an absent key answers
/// `true` without them; a failed `cas=0`, `false` (`src/api/consul/kv.rs`).
pub(crate) fn classify_consul(call: &Call, answer: &Answer) -> Result<Told, Unexpected> {
    let body = answer.json();
    match (call, answer.status) {
        (_, s) if ambiguous(s) => Ok(Told::unknown()),
        (Call::Read, 404) => Ok(Told::of(Outcome::NotFound)),
        (Call::Read, 200) => {
            let value = body[0]["Value"]
                .as_str()
                .and_then(|d| BASE64.decode(d).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .ok_or_else(|| answer.unexpected("a read without a base64 Value"))?;
            let version = answer
                .version
                .ok_or_else(|| answer.unexpected("a read without X-Pika-Version"))?;
            Ok(Told::of(Outcome::Value { value, version }))
        }
        (Call::Read, _) => Err(answer.unexpected("not an answer to a read")),
        (_, 200) if body == json!(false) => Ok(Told::of(Outcome::Conflict)),
        (_, 200) if body == json!(true) => match answer.version {
            Some(version) => Ok(Told {
                outcome: Outcome::Written { version },
                epoch: answer.epoch,
                revision: None,
            }),
            None if matches!(call, Call::Delete { .. }) => Ok(Told::of(Outcome::NotFound)),
            None => Err(answer.unexpected("a put answered true without X-Pika-Version")),
        },
        (_, 200) => Err(answer.unexpected("a write answered neither true nor false")),
        _ => Err(answer.unexpected("not an answer to a write")),
    }
}

/// One client request, turned into the checker's terms.
///
/// A write carries `request_id` as its `X-Request-Id`: sent again with the
/// same id, it is answered with what the first one did instead of being
/// applied twice.
pub(crate) fn perform(
    http: &reqwest::blocking::Client,
    url: &str,
    path: &str,
    call: &Call,
    request_id: &str,
) -> Result<Told, Unexpected> {
    let target = format!("{url}/api/v1/file/{path}");
    let response = match call {
        Call::Read => http.get(&target).send(),
        Call::Put { value, expected } => {
            let mut body = json!({"data": BASE64.encode(value)});
            if let Some(e) = expected {
                body["expected_version"] = json!(e);
            }
            http.post(&target)
                .header("x-request-id", request_id)
                .json(&body)
                .send()
        }
        Call::Delete { expected } => {
            let q = expected
                .map(|e| format!("?expected_version={e}"))
                .unwrap_or_default();
            http.delete(format!("{target}{q}"))
                .header("x-request-id", request_id)
                .send()
        }
    };
    match Answer::of(response) {
        None => Ok(Told::unknown()),
        Some(answer) => classify_native(call, &answer),
    }
}

/// A native answer in the checker's terms: a read answers 200 with
/// `{data, version, ..}` or 404; a put 201 with `{version, revision,
/// epoch}` (`src/api/files.rs`), a delete 204 with `X-Pika-Version` and
/// `X-Pika-Epoch`, or 404 when there was nothing to delete; a guarded write
/// whose guard failed 409 (`src/api/error.rs`).
pub(crate) fn classify_native(call: &Call, answer: &Answer) -> Result<Told, Unexpected> {
    let body = answer.json();
    match (call, answer.status) {
        (_, s) if ambiguous(s) => Ok(Told::unknown()),
        (Call::Read, 200) => {
            let value = body["data"]
                .as_str()
                .and_then(|d| BASE64.decode(d).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .ok_or_else(|| answer.unexpected("a read without base64 `data`"))?;
            let version = body["version"]
                .as_u64()
                .ok_or_else(|| answer.unexpected("a read without `version`"))?;
            Ok(Told::of(Outcome::Value { value, version }))
        }
        (Call::Read | Call::Delete { .. }, 404) => Ok(Told::of(Outcome::NotFound)),
        (Call::Put { .. } | Call::Delete { .. }, 409) => Ok(Told::of(Outcome::Conflict)),
        (Call::Put { .. }, 201) => {
            let version = body["version"]
                .as_u64()
                .ok_or_else(|| answer.unexpected("a 201 without `version`"))?;
            Ok(Told {
                outcome: Outcome::Written { version },
                epoch: body["epoch"].as_u64(),
                revision: body["revision"].as_u64(),
            })
        }
        (Call::Delete { .. }, 204) => {
            let version = answer
                .version
                .ok_or_else(|| answer.unexpected("a 204 without X-Pika-Version"))?;
            Ok(Told {
                outcome: Outcome::Written { version },
                epoch: answer.epoch,
                revision: None,
            })
        }
        (Call::Read, _) => Err(answer.unexpected("not an answer to a read")),
        (Call::Put { .. }, _) => Err(answer.unexpected("not an answer to a put")),
        (Call::Delete { .. }, _) => Err(answer.unexpected("not an answer to a delete")),
    }
}

/// What one client did beyond its history.
#[derive(Debug, Default, Clone)]
pub(crate) struct ClientTally {
    pub(crate) through_consul: usize,
    pub(crate) retried: usize,
    pub(crate) resolved_by_retry: usize,
    /// Acknowledged writes sent again later with their request id.
    pub(crate) resent: usize,
    /// Answers that break the API's promises: a resent write answered
    /// otherwise than the first time, a retry or resend under a write's own
    /// request id answered 400.
    pub(crate) violations: Vec<String>,
    /// Harness or protocol errors: answers the campaign cannot use (see
    /// [`Unexpected`]), a history it could not record to. The first
    /// [`MAX_ERRORS`], and how many more there were.
    pub(crate) errors: Vec<String>,
    pub(crate) errors_more: usize,
    /// The highest revision a 201 named, and the write it acknowledged.
    pub(crate) highest_revision: Option<(u64, String)>,
}

/// Errors kept per client: a server that answers everything with a 500
/// says so in every answer, and the first few say what it is.
const MAX_ERRORS: usize = 5;

impl ClientTally {
    fn error(&mut self, message: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(message);
        } else {
            self.errors_more += 1;
        }
    }

    fn acknowledged(&mut self, told: &Told, what: impl FnOnce() -> String) {
        if let Some(revision) = told.revision
            && self
                .highest_revision
                .as_ref()
                .is_none_or(|(r, _)| revision > *r)
        {
            self.highest_revision = Some((revision, what()));
        }
    }
}

/// An acknowledged native write, kept to be sent again later.
struct Answered {
    path: String,
    call: Call,
    request_id: String,
    told: Told,
    at: Instant,
}

/// Chance per operation that a client sends an acknowledged write again,
/// with its request id, as a client that lost the answer would: at least
/// [`RESEND_AFTER`] after it was answered, so often under another leader,
/// which must find the id in the replicated record (or its log) rather
/// than in the memory of the leader that applied it.
const RESEND_CHANCE: f64 = 0.05;
const RESEND_AFTER: Duration = Duration::from_secs(1);

/// Times a native write whose outcome is unknown is sent again with its
/// request id, each to the next node, as a client following a 503's advice
/// ("retry with the same X-Request-Id to learn its outcome") does.
const RETRIES: usize = 2;
/// The pause before each retry: long enough for a lost leader's lease to
/// run out and another to take over in some of them.
const RETRY_PAUSE: Duration = Duration::from_millis(300);

/// Whether an answer to a write sent again under its own request id breaks
/// the request-id contract: the server must answer a retry of the same op
/// with the first attempt's answer, and keeps its 400 ("request id reused")
/// for a different op under a known id (`OpError::RequestIdReused`).
fn reuse_refused(unexpected: &Unexpected) -> bool {
    unexpected.status == 400
}

pub(crate) fn client(
    id: usize,
    shared_urls: Urls,
    paths: usize,
    seed: u64,
    origin: Instant,
    until: Instant,
    history: History,
) -> anyhow::Result<ClientTally> {
    let http = reqwest::blocking::Client::builder()
        .default_headers(crate::admin_headers())
        .timeout(Duration::from_millis(2500))
        .build()
        .with_context(|| format!("building client {id}'s HTTP client"))?;
    let mut tally = ClientTally::default();
    let mut dice = Dice::new(seed);
    // Its own dice, so the main sequence of calls stays what it was.
    let mut resend_dice = Dice::new(seed ^ 0x5E5E_5E5E);
    let mut answered: Vec<Answered> = Vec::new();
    let mut n = 0;
    while Instant::now() < until {
        let urls: Vec<String> = shared_urls
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if resend_dice.unit() < RESEND_CHANCE {
            resend(&http, &urls, &mut answered, &mut resend_dice, &mut tally);
        }
        n += 1;
        let path = format!("c/p{}", dice.below(paths));
        let mut target = dice.below(urls.len());
        let roll = dice.unit();
        let guard = |dice: &mut Dice| (dice.unit() < 0.3).then(|| dice.below(4) as u64);
        let call = if roll < 0.5 {
            Call::Read
        } else if roll < 0.85 {
            Call::Put {
                value: format!("{id}.{n}"),
                expected: guard(&mut dice),
            }
        } else {
            Call::Delete {
                expected: guard(&mut dice),
            }
        };
        // Half of what the Consul API can express goes through it: the
        // same store behind two APIs, one history.
        let consul = consul_can(&call) && dice.unit() < 0.5;
        tally.through_consul += usize::from(consul);
        let request_id = format!("campaign-{seed:x}-{n}");
        let invoked = origin.elapsed().as_micros() as u64;
        let mut answer = match consul {
            true => perform_consul(&http, &urls[target], &path, &call),
            false => perform(&http, &urls[target], &path, &call, &request_id),
        };
        // One operation in the history however many attempts it took:
        // if a retry applied it again, the value would show up at two
        // versions, which no linearization allows.
        let mut retries = 0;
        if !consul && call != Call::Read {
            while retries < RETRIES
                && matches!(&answer, Ok(t) if t.outcome == Outcome::Unknown)
                && Instant::now() < until
            {
                std::thread::sleep(RETRY_PAUSE);
                target = (target + 1) % urls.len();
                retries += 1;
                tally.retried += 1;
                answer = perform(&http, &urls[target], &path, &call, &request_id);
                tally.resolved_by_retry +=
                    usize::from(matches!(&answer, Ok(t) if t.outcome != Outcome::Unknown));
            }
        }
        let told = match answer {
            Ok(told) => told,
            Err(unexpected) => {
                let what = format!(
                    "{call:?} on {path} with request id {request_id}, sent to {}",
                    urls[target]
                );
                if retries > 0 && reuse_refused(&unexpected) {
                    tally.violations.push(format!(
                        "{what} as retry {retries} after an unknown outcome, was answered \
                         {unexpected}: a retry under the write's own request id must get \
                         the first attempt's answer"
                    ));
                } else {
                    let attempt = match retries {
                        0 => String::new(),
                        r => format!(" as retry {r}"),
                    };
                    tally.error(format!("{what}{attempt}, was answered {unexpected}"));
                }
                // An earlier attempt may have been applied: kept as
                // unknown, the checker admits both, and the message above
                // fails the round anyway.
                Told::unknown()
            }
        };
        if matches!(told.outcome, Outcome::Written { .. }) {
            tally.acknowledged(&told, || {
                format!("{call:?} on {path} with request id {request_id}")
            });
            if !consul {
                answered.push(Answered {
                    path: path.clone(),
                    call: call.clone(),
                    request_id: request_id.clone(),
                    told: told.clone(),
                    at: Instant::now(),
                });
            }
        }
        let returned = origin.elapsed().as_micros() as u64;
        let op = Operation {
            client: id,
            call,
            invoked,
            returned: (told.outcome != Outcome::Unknown).then_some(returned),
            outcome: told.outcome,
            epoch: told.epoch,
        };
        match history.lock() {
            Ok(mut h) => h.entry(path).or_default().push(op),
            Err(_) => {
                // Another client panicked while recording: what this one
                // would add could not be checked, so it stops and says so.
                tally.errors.push(format!(
                    "client {id} could not record its operation {n}: the history's lock is \
                     poisoned (a client panicked while recording)"
                ));
                break;
            }
        }
        // Paced, so each path's history stays small enough to check
        // exhaustively (the checker is exponential in the worst case).
        std::thread::sleep(Duration::from_millis(20 + dice.below(20) as u64));
    }
    Ok(tally)
}

/// Sends one acknowledged write again, with its request id, to a random
/// node, once [`RESEND_AFTER`] has passed since its answer. The answer must
/// be the first one again, revision included (or none, the node unable to
/// say now): applied twice, it would name another version.
fn resend(
    http: &reqwest::blocking::Client,
    urls: &[String],
    answered: &mut Vec<Answered>,
    dice: &mut Dice,
    tally: &mut ClientTally,
) {
    let now = Instant::now();
    let Some(i) = answered.iter().position(|a| now >= a.at + RESEND_AFTER) else {
        return;
    };
    let first = answered.swap_remove(i);
    let url = &urls[dice.below(urls.len())];
    tally.resent += 1;
    let what = format!(
        "{:?} on {} with request id {} was answered {:?}{}, and",
        first.call,
        first.path,
        first.request_id,
        first.told.outcome,
        first
            .told
            .revision
            .map(|r| format!(" at revision {r}"))
            .unwrap_or_default()
    );
    match perform(http, url, &first.path, &first.call, &first.request_id) {
        Ok(again) if again.outcome == Outcome::Unknown => {}
        Ok(again)
            if again.outcome != first.told.outcome
                || (again.revision.is_some()
                    && first.told.revision.is_some()
                    && again.revision != first.told.revision) =>
        {
            tally.violations.push(format!(
                "{what} {:?}{} when sent again to {url}",
                again.outcome,
                again
                    .revision
                    .map(|r| format!(" at revision {r}"))
                    .unwrap_or_default()
            ));
        }
        Ok(_) => {}
        Err(unexpected) if reuse_refused(&unexpected) => tally.violations.push(format!(
            "{what} {unexpected} when sent again to {url}: a resend under the write's own \
             request id must get the first answer"
        )),
        Err(unexpected) => tally.error(format!("{what} {unexpected} when sent again to {url}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: Value) -> Answer {
        Answer {
            status,
            version: None,
            epoch: None,
            body: serde_json::to_vec(&body).unwrap_or_default(),
        }
    }

    fn with_headers(mut a: Answer, version: u64, epoch: u64) -> Answer {
        a.version = Some(version);
        a.epoch = Some(epoch);
        a
    }

    fn put() -> Call {
        Call::Put {
            value: "v".into(),
            expected: None,
        }
    }

    fn delete() -> Call {
        Call::Delete { expected: None }
    }

    fn calls() -> [Call; 3] {
        [Call::Read, put(), delete()]
    }

    #[test]
    fn only_503_and_504_leave_a_native_outcome_unknown() {
        for call in calls() {
            for status in [503, 504] {
                assert_eq!(
                    classify_native(&call, &answer(status, json!({"message": "x"}))),
                    Ok(Told::unknown()),
                    "{call:?} answered {status}"
                );
            }
            for status in [400, 401, 403, 413, 422, 500, 502] {
                let got = classify_native(&call, &answer(status, json!({"message": "why"})));
                let err = got.expect_err(&format!("{call:?} answered {status} has no outcome"));
                assert_eq!(err.status, status);
                assert!(err.to_string().contains("why"), "the body is shown: {err}");
            }
        }
    }

    #[test]
    fn a_201_names_version_term_and_revision_and_needs_a_version() {
        let ok = answer(201, json!({"version": 4, "revision": 17, "epoch": 3}));
        assert_eq!(
            classify_native(&put(), &ok),
            Ok(Told {
                outcome: Outcome::Written { version: 4 },
                epoch: Some(3),
                revision: Some(17),
            })
        );
        // Read as version 0 before: a write no linearization could place.
        assert!(classify_native(&put(), &answer(201, json!({"revision": 17}))).is_err());
        let cut_short = Answer {
            body: b"{\"vers".to_vec(),
            ..answer(201, Value::Null)
        };
        assert!(classify_native(&put(), &cut_short).is_err());
    }

    #[test]
    fn a_204_needs_its_version_header() {
        let ok = with_headers(answer(204, Value::Null), 5, 2);
        assert_eq!(
            classify_native(&delete(), &ok),
            Ok(Told {
                outcome: Outcome::Written { version: 5 },
                epoch: Some(2),
                revision: None,
            })
        );
        assert!(classify_native(&delete(), &answer(204, Value::Null)).is_err());
    }

    #[test]
    fn native_statuses_count_only_for_the_calls_that_get_them() {
        let not_found = answer(404, json!({"message": "c/p1 does not exist"}));
        assert_eq!(
            classify_native(&Call::Read, &not_found),
            Ok(Told::of(Outcome::NotFound))
        );
        assert_eq!(
            classify_native(&delete(), &not_found),
            Ok(Told::of(Outcome::NotFound))
        );
        // A put is never refused with a 404 (a failed guard is a 409): an
        // unknown route, say, is the harness's mistake.
        assert!(classify_native(&put(), &not_found).is_err());
        let conflict = answer(409, json!({"message": "version mismatch"}));
        assert_eq!(
            classify_native(&put(), &conflict),
            Ok(Told::of(Outcome::Conflict))
        );
        assert!(classify_native(&Call::Read, &conflict).is_err());
        assert!(classify_native(&Call::Read, &answer(201, json!({"version": 1}))).is_err());
        assert!(classify_native(&put(), &answer(200, json!({"version": 1}))).is_err());
    }

    #[test]
    fn a_native_read_needs_data_and_version() {
        let read = answer(200, json!({"data": BASE64.encode("a"), "version": 3}));
        assert_eq!(
            classify_native(&Call::Read, &read),
            Ok(Told::of(Outcome::Value {
                value: "a".into(),
                version: 3
            }))
        );
        assert!(classify_native(&Call::Read, &answer(200, json!({"data": "YQ=="}))).is_err());
        assert!(classify_native(&Call::Read, &answer(200, json!({"version": 3}))).is_err());
    }

    #[test]
    fn consul_answers() {
        let changed = with_headers(answer(200, json!(true)), 7, 4);
        assert_eq!(
            classify_consul(&put(), &changed),
            Ok(Told {
                outcome: Outcome::Written { version: 7 },
                epoch: Some(4),
                revision: None,
            })
        );
        assert_eq!(
            classify_consul(&delete(), &answer(200, json!(true))),
            Ok(Told::of(Outcome::NotFound))
        );
        assert!(classify_consul(&put(), &answer(200, json!(true))).is_err());
        assert_eq!(
            classify_consul(&put(), &answer(200, json!(false))),
            Ok(Told::of(Outcome::Conflict))
        );
        assert!(classify_consul(&put(), &answer(200, json!({"x": 1}))).is_err());
        let pair = with_headers(answer(200, json!([{"Value": BASE64.encode("b")}])), 2, 1);
        assert_eq!(
            classify_consul(&Call::Read, &pair),
            Ok(Told::of(Outcome::Value {
                value: "b".into(),
                version: 2
            }))
        );
        assert!(classify_consul(&Call::Read, &answer(200, json!([{"Value": "Yg=="}]))).is_err());
        for call in calls() {
            assert_eq!(
                classify_consul(&call, &answer(503, Value::Null)),
                Ok(Told::unknown())
            );
            for status in [400, 401, 403, 500] {
                assert!(classify_consul(&call, &answer(status, Value::Null)).is_err());
            }
        }
        assert!(classify_consul(&put(), &answer(404, Value::Null)).is_err());
    }

    #[test]
    fn a_400_to_a_write_sent_again_under_its_id_breaks_the_contract() {
        let refused = answer(400, json!({"message": "request id reused"}));
        let err = classify_native(&put(), &refused).expect_err("a 400 is no outcome");
        assert!(reuse_refused(&err));
        let failed = classify_native(&put(), &answer(500, Value::Null)).expect_err("500");
        assert!(!reuse_refused(&failed));
    }

    #[test]
    fn the_tally_keeps_the_highest_acknowledged_revision_and_a_few_errors() {
        let mut tally = ClientTally::default();
        let at = |revision| Told {
            outcome: Outcome::Written { version: 1 },
            epoch: None,
            revision: Some(revision),
        };
        tally.acknowledged(&at(9), || "nine".into());
        tally.acknowledged(&at(4), || "four".into());
        tally.acknowledged(&Told::of(Outcome::Written { version: 2 }), || "none".into());
        assert_eq!(tally.highest_revision, Some((9, "nine".into())));
        for i in 0..MAX_ERRORS + 3 {
            tally.error(format!("error {i}"));
        }
        assert_eq!(tally.errors.len(), MAX_ERRORS);
        assert_eq!(tally.errors_more, 3);
    }
}
