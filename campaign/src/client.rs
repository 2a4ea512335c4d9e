//! A campaign client: random reads and writes on a few shared paths, each
//! recorded with its invocation and answer, through pika's API or Consul's;
//! writes whose outcome is unknown retried with their request id, and some
//! acknowledged ones sent again later (a resend must be answered alike).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use pika_replication::dice::Dice;

use crate::linearizability::{Call, Operation, Outcome};

/// Every client's operations, by path.
pub(crate) type History = Arc<Mutex<BTreeMap<String, Vec<Operation>>>>;

/// What the campaign reads of an answer: its status, the version and term
/// of a change (`X-Pika-Version`, `X-Pika-Epoch`), and its JSON body.
struct Answer {
    status: u16,
    version: Option<u64>,
    epoch: Option<u64>,
    body: Value,
}

impl Answer {
    /// `None` when there was no answer (timeout, refused connection).
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
        Some(Answer {
            status: response.status().as_u16(),
            version,
            epoch,
            body: response.json().unwrap_or(Value::Null),
        })
    }
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

/// A call through the Consul KV API, in the checker's terms. A change
/// answers `true` with `X-Pika-Version` and `X-Pika-Epoch`; a delete of an
/// absent key answers `true` without them; a failed `cas=0`, `false`.
fn perform_consul(
    http: &reqwest::blocking::Client,
    url: &str,
    path: &str,
    call: &Call,
) -> (Outcome, Option<u64>) {
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
    let Some(Answer {
        status,
        version,
        epoch,
        body,
    }) = Answer::of(response)
    else {
        return (Outcome::Unknown, None);
    };
    match (call, status) {
        (Call::Read, 404) => (Outcome::NotFound, None),
        (Call::Read, 200) => {
            let value = body[0]["Value"]
                .as_str()
                .and_then(|d| BASE64.decode(d).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            match version {
                Some(version) => (Outcome::Value { value, version }, None),
                None => (Outcome::Unknown, None),
            }
        }
        (_, 200) if body == json!(false) => (Outcome::Conflict, None),
        (_, 200) if body == json!(true) => match version {
            Some(version) => (Outcome::Written { version }, epoch),
            None if matches!(call, Call::Delete { .. }) => (Outcome::NotFound, None),
            None => (Outcome::Unknown, None),
        },
        _ => (Outcome::Unknown, None),
    }
}

/// One client request, timed on the round's clock and turned into the
/// checker's terms.
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
) -> (Outcome, Option<u64>) {
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
    let Some(Answer {
        status,
        version: version_header,
        epoch: epoch_header,
        body,
    }) = Answer::of(response)
    else {
        return (Outcome::Unknown, None);
    };
    let epoch = match (call, status) {
        (Call::Put { .. }, 201) => body["epoch"].as_u64(),
        (Call::Delete { .. }, 204) => epoch_header,
        _ => None,
    };
    let outcome = match (call, status) {
        (_, 409) => Outcome::Conflict,
        (_, 404) => Outcome::NotFound,
        (Call::Read, 200) => {
            let value = body["data"]
                .as_str()
                .and_then(|d| BASE64.decode(d).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            Outcome::Value {
                value,
                version: body["version"].as_u64().unwrap_or(0),
            }
        }
        (Call::Put { .. }, 201) => Outcome::Written {
            version: body["version"].as_u64().unwrap_or(0),
        },
        (Call::Delete { .. }, 204) => Outcome::Written {
            version: version_header.unwrap_or(0),
        },
        // 503 and anything else: not acknowledged, may or may not apply.
        _ => Outcome::Unknown,
    };
    (outcome, epoch)
}

/// What one client did beyond its history.
#[derive(Debug, Default, Clone)]
pub(crate) struct ClientTally {
    pub(crate) through_consul: usize,
    pub(crate) retried: usize,
    pub(crate) resolved_by_retry: usize,
    /// Acknowledged writes sent again later with their request id.
    pub(crate) resent: usize,
    /// A resent write answered otherwise than the first time: a violation.
    pub(crate) resend_mismatches: Vec<String>,
}

/// An acknowledged native write, kept to be sent again later.
struct Answered {
    path: String,
    call: Call,
    request_id: String,
    outcome: Outcome,
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

pub(crate) fn client(
    id: usize,
    urls: Vec<String>,
    paths: usize,
    seed: u64,
    origin: Instant,
    until: Instant,
    history: History,
) -> ClientTally {
    let http = match reqwest::blocking::Client::builder()
        .default_headers(crate::admin_headers())
        .timeout(Duration::from_millis(2500))
        .build()
    {
        Ok(h) => h,
        Err(_) => return ClientTally::default(),
    };
    let mut tally = ClientTally::default();
    let mut dice = Dice::new(seed);
    // Its own dice, so the main sequence of calls stays what it was.
    let mut resend_dice = Dice::new(seed ^ 0x5E5E_5E5E);
    let mut answered: Vec<Answered> = Vec::new();
    let mut n = 0;
    while Instant::now() < until {
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
        let (mut outcome, mut epoch) = match consul {
            true => perform_consul(&http, &urls[target], &path, &call),
            false => perform(&http, &urls[target], &path, &call, &request_id),
        };
        // One operation in the history however many attempts it took:
        // if a retry applied it again, the value would show up at two
        // versions, which no linearization allows.
        if !consul && call != Call::Read {
            for _ in 0..RETRIES {
                if outcome != Outcome::Unknown || Instant::now() >= until {
                    break;
                }
                std::thread::sleep(RETRY_PAUSE);
                target = (target + 1) % urls.len();
                tally.retried += 1;
                (outcome, epoch) = perform(&http, &urls[target], &path, &call, &request_id);
                tally.resolved_by_retry += usize::from(outcome != Outcome::Unknown);
            }
            if matches!(outcome, Outcome::Written { .. }) {
                answered.push(Answered {
                    path: path.clone(),
                    call: call.clone(),
                    request_id: request_id.clone(),
                    outcome: outcome.clone(),
                    at: Instant::now(),
                });
            }
        }
        let returned = origin.elapsed().as_micros() as u64;
        let op = Operation {
            client: id,
            call,
            invoked,
            returned: (outcome != Outcome::Unknown).then_some(returned),
            outcome,
            epoch,
        };
        if let Ok(mut h) = history.lock() {
            h.entry(path).or_default().push(op);
        }
        // Paced, so each path's history stays small enough to check
        // exhaustively (the checker is exponential in the worst case).
        std::thread::sleep(Duration::from_millis(20 + dice.below(20) as u64));
    }
    tally
}

/// Sends one acknowledged write again, with its request id, to a random
/// node, once [`RESEND_AFTER`] has passed since its answer. The answer must
/// be the first one again (or none, the node unable to say now): applied
/// twice, it would name another version.
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
    let (again, _) = perform(http, url, &first.path, &first.call, &first.request_id);
    if again != first.outcome && again != Outcome::Unknown {
        tally.resend_mismatches.push(format!(
            "{:?} on {} with request id {} was answered {:?}, and {:?} when sent again to {url}",
            first.call, first.path, first.request_id, first.outcome, again
        ));
    }
}
