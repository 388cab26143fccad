//! The sources of a pipeline running in this process, and the control API that adds and
//! removes them while it runs (DeepStream's runtime source add/delete).
//!
//! Every source runs on its own thread with its own stop flag, so removing one ends only its
//! stream: it sends its end-of-stream notice and the stages after it finalise that stream
//! (files, tracks) while the others go on. A source added later gets the next unused
//! `source_id` — ids are never reused, so metadata consumers never see two cameras under one
//! id — and its name (`id`) becomes the `source_name`/`sensorId` of its frames and events.
//!
//! While the pipeline accepts new sources (`[pipeline] max_sources`), the registry keeps
//! the links into the first stages open, so the pipeline waits for new sources after every
//! current one ended; it ends when it is stopped (Ctrl-C, a failed stage).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use serde::Serialize;
use vidmesh_actors::source::{self, GstSource, SourceProgress, SourceReport, SourceUri};
use vidmesh_actors::{BuildContext, Outputs};
use vidmesh_transport::LinkSender;

use crate::dashboard::SourceState;
use crate::http::{Request, Response};

/// Largest JSON body `POST /sources` accepts is limited by the HTTP server; this bounds the
/// number of sources the registry remembers after they ended (summaries, `GET /sources`).
const MAX_REMEMBERED: usize = 4096;

/// A source as everyone but its own thread sees it.
#[derive(Clone)]
pub struct SourceHandle {
    pub id: u32,
    pub name: String,
    /// The URI without credentials.
    pub uri: String,
    pub live: bool,
    pub progress: Arc<SourceProgress>,
    pub state: Arc<Mutex<SourceState>>,
    /// Set by the source's thread when it returns.
    pub ended: Arc<AtomicBool>,
    /// Asks this source alone to stop.
    stop: Arc<AtomicBool>,
}

impl SourceHandle {
    /// The state to show: running sources that lost their camera show `reconnecting`.
    pub fn state(&self) -> SourceState {
        match &*lock(&self.state) {
            SourceState::Running if self.progress.reconnecting.load(Ordering::Relaxed) => {
                SourceState::Reconnecting
            }
            state => state.clone(),
        }
    }
}

/// How one source went, for the run summary.
pub struct FinishedSource {
    pub name: String,
    pub report: SourceReport,
}

/// Why a source could not be added.
#[derive(Debug, PartialEq, Eq)]
pub enum AddError {
    /// The settings are not a valid `[[source]]` entry.
    Invalid(String),
    /// A running source already has this name.
    Duplicate(String),
    /// `max_sources` sources are running.
    Full(usize),
    /// The pipeline is stopping or does not take new sources.
    Closed,
}

impl std::fmt::Display for AddError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddError::Invalid(e) => write!(f, "{e}"),
            AddError::Duplicate(name) => write!(f, "a source named `{name}` is already running"),
            AddError::Full(max) => write!(
                f,
                "{max} sources are running, the pipeline's `max_sources`; remove one first"
            ),
            AddError::Closed => write!(f, "the pipeline is stopping and takes no new sources"),
        }
    }
}

struct Entry {
    handle: SourceHandle,
    thread: Option<JoinHandle<SourceReport>>,
    /// Removed through the API (its stream ended on request, not by itself).
    removed: bool,
}

struct Inner {
    /// Links into the stages fed by `sources`; `None` once no source may be added.
    links: Option<Vec<LinkSender>>,
    entries: Vec<Entry>,
    next_id: u32,
}

/// Every source of one run, started or ended.
pub struct SourceRegistry {
    inner: Mutex<Inner>,
    /// Sources running at once at most; 0 when sources cannot be added at run time.
    max_sources: usize,
    /// Parses settings of added sources like the topology's `[[source]]` entries.
    context: BuildContext,
}

impl SourceRegistry {
    /// A registry whose sources send into `links`. With `max_sources` 0 the links are kept
    /// only until [`Self::close`], which the runner calls once the declared sources started.
    pub fn new(links: Vec<LinkSender>, max_sources: usize, context: BuildContext) -> Self {
        Self {
            inner: Mutex::new(Inner {
                links: Some(links),
                entries: Vec::new(),
                next_id: 0,
            }),
            max_sources,
            context,
        }
    }

    /// Whether sources can be added while the pipeline runs.
    pub fn accepts_new(&self) -> bool {
        self.max_sources > 0
    }

    /// Starts a source from its `[[source]]` settings, with the next free source id.
    pub fn add(
        &self,
        settings: source::Settings,
        uri: SourceUri,
    ) -> Result<SourceHandle, AddError> {
        let mut inner = lock(&self.inner);
        let links = inner.links.clone().ok_or(AddError::Closed)?;
        let running = inner
            .entries
            .iter()
            .filter(|e| !e.handle.ended.load(Ordering::Relaxed));
        if running.clone().any(|e| e.handle.name == settings.id) {
            return Err(AddError::Duplicate(settings.id));
        }
        if self.max_sources > 0 && running.count() >= self.max_sources {
            return Err(AddError::Full(self.max_sources));
        }
        let id = inner.next_id;
        let handle = SourceHandle {
            id,
            name: settings.id.clone(),
            uri: uri.display(),
            live: uri.is_live(),
            progress: Arc::new(SourceProgress::default()),
            state: Arc::new(Mutex::new(SourceState::Running)),
            ended: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let thread = {
            let h = handle.clone();
            let mut source = GstSource::new(settings, uri, id);
            let mut out = Outputs::new(links);
            std::thread::Builder::new()
                .name(format!("source-{}", h.name))
                .spawn(move || {
                    let report = source.run(&mut out, &h.stop, &h.progress);
                    // Drop the links before saying so, so a closed registry's last source
                    // closes the first stages' inboxes by the time it counts as ended.
                    drop(out);
                    *lock(&h.state) = match &report.error {
                        Some(e) => SourceState::Failed(e.clone()),
                        None => SourceState::Ended,
                    };
                    h.ended.store(true, Ordering::Relaxed);
                    report
                })
                .map_err(|e| AddError::Invalid(format!("cannot start its thread: {e}")))?
        };
        inner.next_id += 1;
        inner.entries.push(Entry {
            handle: handle.clone(),
            thread: Some(thread),
            removed: false,
        });
        forget_oldest_ended(&mut inner.entries);
        tracing::info!(source = %handle.name, source_id = id, uri = %handle.uri, "source started");
        Ok(handle)
    }

    /// Parses a `[[source]]` table (from the API) and starts it.
    pub fn add_table(&self, table: &toml::Table) -> Result<SourceHandle, AddError> {
        let (settings, uri) = source::Settings::load(table, &self.context)
            .map_err(|e| AddError::Invalid(e.to_string()))?;
        self.add(settings, uri)
    }

    /// Stops the running source named `name`; its stream ends as if its file had ended.
    pub fn remove(&self, name: &str) -> Option<SourceHandle> {
        let mut inner = lock(&self.inner);
        let entry = inner
            .entries
            .iter_mut()
            .find(|e| e.handle.name == name && !e.handle.ended.load(Ordering::Relaxed))?;
        entry.removed = true;
        entry.handle.stop.store(true, Ordering::Relaxed);
        tracing::info!(source = %name, source_id = entry.handle.id, "source removed");
        Some(entry.handle.clone())
    }

    /// Every source the registry knows, oldest first.
    pub fn handles(&self) -> Vec<SourceHandle> {
        lock(&self.inner)
            .entries
            .iter()
            .map(|e| e.handle.clone())
            .collect()
    }

    /// No more sources: drops the registry's links, so the stages end once the running sources
    /// end.
    pub fn close(&self) {
        lock(&self.inner).links = None;
    }

    /// Asks every source to stop and takes no new ones.
    pub fn stop_all(&self) {
        let mut inner = lock(&self.inner);
        inner.links = None;
        for e in &inner.entries {
            e.handle.stop.store(true, Ordering::Relaxed);
        }
    }

    /// Whether every source started so far has ended.
    pub fn all_ended(&self) -> bool {
        lock(&self.inner)
            .entries
            .iter()
            .all(|e| e.handle.ended.load(Ordering::Relaxed))
    }

    /// Waits for every source thread and reports each source, oldest first.
    pub fn join(&self) -> Vec<FinishedSource> {
        let threads: Vec<(String, Option<JoinHandle<SourceReport>>)> = lock(&self.inner)
            .entries
            .iter_mut()
            .map(|e| (e.handle.name.clone(), e.thread.take()))
            .collect();
        threads
            .into_iter()
            .map(|(name, thread)| FinishedSource {
                name,
                report: thread
                    .map(|t| {
                        t.join().unwrap_or_else(|_| SourceReport {
                            frames: 0,
                            reconnects: 0,
                            error: Some("the source thread panicked".into()),
                        })
                    })
                    .unwrap_or(SourceReport {
                        frames: 0,
                        reconnects: 0,
                        error: None,
                    }),
            })
            .collect()
    }

    /// The control API: `GET /sources`, `GET /sources/{id}`, `POST /sources` (a JSON object
    /// with the keys of a `[[source]]` entry), `DELETE /sources/{id}`. `None` for other paths.
    pub fn handle(&self, request: &Request) -> Option<Response> {
        let rest = request.path.strip_prefix("/sources")?;
        let name = match rest {
            "" | "/" => None,
            _ => Some(rest.strip_prefix('/')?),
        };
        Some(match (request.method.as_str(), name) {
            ("GET" | "HEAD", None) => {
                let all: Vec<SourceView> = self.handles().iter().map(SourceView::of).collect();
                json(200, &all)
            }
            ("GET" | "HEAD", Some(name)) => match self.find(name) {
                Some(h) => json(200, &SourceView::of(&h)),
                None => problem(404, &format!("no source named `{name}`")),
            },
            ("POST", None) => self.post(&request.body),
            ("DELETE", Some(name)) => match self.remove(name) {
                Some(h) => json(200, &SourceView::of(&h)),
                None => problem(404, &format!("no running source named `{name}`")),
            },
            _ => Response::text(405, "method not allowed\n"),
        })
    }

    fn post(&self, body: &[u8]) -> Response {
        if !self.accepts_new() {
            return problem(
                409,
                "this pipeline takes no sources at run time; set `max_sources` in [pipeline]",
            );
        }
        let table = match parse_source_json(body) {
            Ok(t) => t,
            Err(e) => return problem(400, &e),
        };
        match self.add_table(&table) {
            Ok(h) => json(201, &SourceView::of(&h)),
            Err(e @ AddError::Invalid(_)) => problem(400, &e.to_string()),
            Err(e @ (AddError::Duplicate(_) | AddError::Full(_))) => problem(409, &e.to_string()),
            Err(e @ AddError::Closed) => problem(503, &e.to_string()),
        }
    }

    /// The newest source named `name` (a name may return after its source was removed).
    fn find(&self, name: &str) -> Option<SourceHandle> {
        lock(&self.inner)
            .entries
            .iter()
            .rev()
            .find(|e| e.handle.name == name)
            .map(|e| e.handle.clone())
    }
}

/// Ended sources beyond [`MAX_REMEMBERED`] are forgotten, oldest first, so a pipeline whose
/// sources come and go for months does not grow.
fn forget_oldest_ended(entries: &mut Vec<Entry>) {
    while entries.len() > MAX_REMEMBERED {
        let Some(i) = entries
            .iter()
            .position(|e| e.handle.ended.load(Ordering::Relaxed))
        else {
            return;
        };
        let entry = entries.remove(i);
        if let Some(t) = entry.thread {
            let _ = t.join();
        }
    }
}

/// A `POST /sources` body: one JSON object whose values are strings, numbers or booleans.
fn parse_source_json(body: &[u8]) -> Result<toml::Table, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the body is not JSON: {e} (expected e.g. {{\"id\": \"cam2\", \"uri\": \"rtsp://…\"}})"
        )
    })?;
    let object = value
        .as_object()
        .ok_or("the body must be a JSON object with the keys of a [[source]] entry")?;
    let mut table = toml::Table::new();
    for (key, value) in object {
        let value = match value {
            serde_json::Value::String(s) => toml::Value::String(s.clone()),
            serde_json::Value::Bool(b) => toml::Value::Boolean(*b),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => toml::Value::Integer(i),
                (None, Some(f)) => toml::Value::Float(f),
                _ => return Err(format!("`{key}`: {n} is out of range")),
            },
            other => {
                return Err(format!(
                    "`{key}` must be a string, number or boolean, not {other}"
                ))
            }
        };
        table.insert(key.clone(), value);
    }
    Ok(table)
}

/// A source as `GET /sources` shows it.
#[derive(Serialize)]
struct SourceView {
    /// The `source_id` its frames carry.
    source_id: u32,
    id: String,
    uri: String,
    state: &'static str,
    frames: u64,
    reconnects: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl SourceView {
    fn of(h: &SourceHandle) -> Self {
        let state = h.state();
        Self {
            source_id: h.id,
            id: h.name.clone(),
            uri: h.uri.clone(),
            state: state.label(),
            frames: h.progress.frames.load(Ordering::Relaxed),
            reconnects: h.progress.reconnects.load(Ordering::Relaxed),
            error: match state {
                SourceState::Failed(e) => Some(e),
                _ => None,
            },
        }
    }
}

fn json(status: u16, value: &impl Serialize) -> Response {
    let mut r = Response::json(serde_json::to_string(value).unwrap_or_default());
    r.status = status;
    r
}

fn problem(status: u16, message: &str) -> Response {
    json(status, &serde_json::json!({ "error": message }))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_json_becomes_a_source_table() {
        let t = parse_source_json(
            br#"{"id": "cam2", "uri": "testsrc://ball", "loop": true, "max_fps": 5, "x": 1.5}"#,
        )
        .unwrap();
        assert_eq!(t["id"].as_str(), Some("cam2"));
        assert_eq!(t["loop"].as_bool(), Some(true));
        assert_eq!(t["max_fps"].as_integer(), Some(5));
        assert_eq!(t["x"].as_float(), Some(1.5));
    }

    #[test]
    fn malformed_source_json_is_named() {
        assert!(parse_source_json(b"{\"id\": ")
            .unwrap_err()
            .contains("not JSON"));
        assert!(parse_source_json(b"[1]")
            .unwrap_err()
            .contains("JSON object"));
        assert!(parse_source_json(br#"{"id": ["a"]}"#)
            .unwrap_err()
            .contains("`id` must be a string"));
    }
}
