//! `[sourceN]`, `[source-list]` and `[streammux]`: the `[[source]]` entries and the `mux`
//! stage.

use std::path::Path;

use super::ini::{ConfigError, GroupReader, KeyFile};
use super::render::Table;
use super::{is_numbered, micros_text, resolve, short, Notes};

/// One converted source.
#[derive(Debug, Clone)]
pub struct SourceOut {
    /// `sourceN`, N being the DeepStream source id (its index in the batch, and the index
    /// msgconv and nvdsanalytics configs use).
    pub id: String,
    pub comment: String,
    pub table: Table,
}

/// deepstream-app's source types (`NvDsSourceType`).
fn type_name(t: i64) -> &'static str {
    match t {
        1 => "V4L2 camera",
        2 => "URI",
        3 => "multiple URIs",
        4 => "RTSP",
        5 => "CSI camera",
        _ => "unknown type",
    }
}

/// Every enabled source group, in file order (deepstream-app numbers sources that way).
pub fn sources(
    app: &KeyFile,
    dir: &Path,
    notes: &mut Notes,
) -> Result<Vec<SourceOut>, ConfigError> {
    let mut out: Vec<SourceOut> = Vec::new();
    for group in &app.groups {
        if is_numbered(&group.name, "source") {
            let r = GroupReader::new(app, group);
            if r.enabled(false)? {
                source_group(&r, dir, &mut out, notes)?;
            }
        } else if group.name == "source-list" {
            let r = GroupReader::new(app, group);
            source_list(app, &r, dir, &mut out, notes)?;
        }
    }
    Ok(out)
}

fn source_group(
    r: &GroupReader<'_>,
    dir: &Path,
    out: &mut Vec<SourceOut>,
    notes: &mut Notes,
) -> Result<(), ConfigError> {
    let name = r.name().to_string();
    let kind = r.int("type")?.unwrap_or(0);
    if !matches!(kind, 2..=4) {
        notes.not_mapped(
            format!("[{name}] type={kind} ({})", type_name(kind)),
            "vidmesh reads files (file://) and RTSP streams (rtsp://) only; no cameras",
        );
        return Ok(());
    }
    let Some(uri) = r.string("uri")? else {
        return Err(r.error("type", format!("[{name}] type={kind} needs a `uri`")));
    };
    let count = if kind == 3 {
        let n = r.int("num-sources")?.unwrap_or(1);
        if !(1..=1024).contains(&n) {
            return Err(r.error(
                "num-sources",
                format!("[{name}] num-sources must be 1..=1024, got {n}"),
            ));
        }
        n as usize
    } else {
        r.touch("num-sources");
        1
    };
    let Some(uri) = convert_uri(&uri, dir, &format!("[{name}] uri"), notes) else {
        return Ok(());
    };
    let mut common = Table::default();
    if let Some(ms) = r.int("latency")? {
        if uri.starts_with("rtsp") {
            common.set("latency", format!("{ms}ms"));
        }
    }
    if let Some(protocol) = r.int("select-rtp-protocol")? {
        match protocol {
            0 => {}
            4 => {
                common.set("rtsp_transport", "tcp");
            }
            other => notes.approximate(
                format!("[{name}] select-rtp-protocol={other}"),
                "only 4 (TCP) and 0 (GStreamer's choice) have vidmesh equivalents; GStreamer \
                 chooses",
            ),
        }
    }
    if let Some(n) = r.int("drop-frame-interval")? {
        if n > 1 {
            notes.not_mapped(
                format!("[{name}] drop-frame-interval={n}"),
                format!(
                    "vidmesh limits a source by rate, not by count: set `max_fps` to the \
                     stream's frame rate / {n}"
                ),
            );
        }
    }
    let interval = r.int("rtsp-reconnect-interval-sec")?;
    let attempts = r.int("rtsp-reconnect-attempts")?;
    if let Some(secs) = interval.filter(|s| *s > 0) {
        if uri.starts_with("rtsp") {
            common.set("reconnect_interval", format!("{secs}s"));
            // -1 (DeepStream's default) is "for ever", vidmesh's default too.
            if let Some(n) = attempts.filter(|n| *n >= 0) {
                common.set("reconnect_attempts", n);
            }
            notes.approximate(
                format!("[{name}] rtsp-reconnect-interval-sec={secs}"),
                "vidmesh waits this long before the first reconnect and doubles the wait (up \
                 to 30 s) while attempts fail",
            );
        } else {
            notes.not_mapped(
                format!("[{name}] rtsp-reconnect-interval-sec={secs}"),
                "vidmesh reconnects rtsp:// sources only",
            );
        }
    }
    if let Some(id) = r.int("camera-id")? {
        notes.approximate(
            format!("[{name}] camera-id={id}"),
            format!(
                "vidmesh names sources; this one is `source{}` (its position, which msgconv \
                 and nvdsanalytics configs use)",
                out.len()
            ),
        );
    }
    if r.has("smart-record") || r.has("smart-rec-container") {
        for e in r
            .entries()
            .iter()
            .filter(|e| e.key.starts_with("smart-rec"))
        {
            r.touch(&e.key);
        }
        notes.not_mapped(
            format!("[{name}] smart-record"),
            "vidmesh has no event-triggered recording",
        );
    }
    notes.unused(r, None);
    for k in 0..count {
        let index = out.len();
        let id = format!("source{index}");
        let mut table = Table::default();
        table.set("id", id.clone()).set("uri", uri.clone());
        for (key, node) in &common.0 {
            table.0.push((key.clone(), node.clone()));
        }
        let comment = if count > 1 {
            format!("[{name}] type=3, stream {} of num-sources={count}", k + 1)
        } else {
            format!("[{name}] type={kind} ({})", type_name(kind))
        };
        out.push(SourceOut { id, comment, table });
    }
    Ok(())
}

/// `[source-list]` (deepstream-app 6.2+): `list=uri1;uri2`, optional `sensor-name-list`.
fn source_list(
    app: &KeyFile,
    r: &GroupReader<'_>,
    dir: &Path,
    out: &mut Vec<SourceOut>,
    notes: &mut Notes,
) -> Result<(), ConfigError> {
    let uris = r.list("list")?.unwrap_or_default();
    let names = r.list("sensor-name-list")?.unwrap_or_default();
    r.touch("num-source-bins");
    r.touch("sensor-id-list");
    if r.bool("use-nvmultiurisrcbin")?.unwrap_or(false) {
        notes.not_mapped(
            "[source-list] use-nvmultiurisrcbin=1",
            "vidmesh has no REST API to add or remove streams at run time; the listed streams \
             are converted",
        );
        for key in [
            "http-ip",
            "http-port",
            "max-batch-size",
            "stream-name-display",
        ] {
            r.touch(key);
        }
    }
    if let Some(attrs) = app.reader("source-attr-all") {
        let latency = attrs.int("latency")?;
        attrs.touch("enable");
        attrs.touch("type");
        notes.unused(&attrs, None);
        if latency.is_some() {
            notes.approximate(
                "[source-attr-all] latency",
                "RTSP latency applied to each rtsp:// source of the list",
            );
        }
        for (i, uri) in uris.iter().enumerate() {
            add_listed(uri, names.get(i), latency, dir, out, notes);
        }
    } else {
        for (i, uri) in uris.iter().enumerate() {
            add_listed(uri, names.get(i), None, dir, out, notes);
        }
    }
    notes.unused(r, None);
    Ok(())
}

fn add_listed(
    uri: &str,
    name: Option<&String>,
    latency: Option<i64>,
    dir: &Path,
    out: &mut Vec<SourceOut>,
    notes: &mut Notes,
) {
    let Some(uri) = convert_uri(uri.trim(), dir, "[source-list] list", notes) else {
        return;
    };
    let id = name
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty() && !out.iter().any(|s| &s.id == n))
        .unwrap_or_else(|| format!("source{}", out.len()));
    let mut table = Table::default();
    table.set("id", id.clone()).set("uri", uri.clone());
    if let (Some(ms), true) = (latency, uri.starts_with("rtsp")) {
        table.set("latency", format!("{ms}ms"));
    }
    out.push(SourceOut {
        id,
        comment: "[source-list] list".into(),
        table,
    });
}

/// A deepstream-app source URI as a topology one: relative `file://` paths resolved against
/// the config's directory (deepstream-app does the same), RTSP kept; anything else reported.
pub fn convert_uri(uri: &str, dir: &Path, place: &str, notes: &mut Notes) -> Option<String> {
    if let Some(rest) = uri.strip_prefix("file://") {
        if rest.is_empty() {
            notes.not_mapped(format!("{place}={uri}"), "a file:// URI without a path");
            return None;
        }
        let path = resolve(dir, &percent_decode(rest));
        let path = path.canonicalize().unwrap_or(path);
        return Some(format!("file://{}", path.display()));
    }
    let scheme = uri.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("rtsp" | "rtsps" | "rtspt") => Some(uri.to_string()),
        Some(other) => {
            notes.not_mapped(
                format!("{place}={}", short(&vidmesh_actors::source::redact(uri))),
                format!("vidmesh sources read file:// and rtsp:// URIs, not {other}://"),
            );
            None
        }
        None => {
            notes.not_mapped(
                format!("{place}={}", short(uri)),
                "not a URI (expected file://PATH or rtsp://HOST/PATH)",
            );
            None
        }
    }
}

/// `%20` → space in file URIs; malformed escapes stay as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_string())
}

/// `[streammux]` → the `mux` stage. Without the group (or its batch-size), deepstream-app
/// batches as many frames as there are sources.
pub fn streammux(
    r: Option<&GroupReader<'_>>,
    sources: usize,
    notes: &mut Notes,
) -> Result<Table, ConfigError> {
    let mut table = Table::default();
    table.set("kind", "mux");
    let Some(r) = r else {
        table.set("batch_size", sources.max(1) as i64);
        return Ok(table);
    };
    let batch = match r.int("batch-size")? {
        Some(n) if (1..=1024).contains(&n) => n,
        Some(n) => {
            return Err(r.error(
                "batch-size",
                format!("[streammux] batch-size must be 1..=1024, got {n}"),
            ))
        }
        None => sources.max(1) as i64,
    };
    table.set("batch_size", batch);
    match r.int("batched-push-timeout")? {
        Some(us) if us > 0 => {
            table.set("batch_timeout", micros_text(us));
        }
        Some(us) => notes.approximate(
            format!("[streammux] batched-push-timeout={us}"),
            "no timeout means waiting for full batches; vidmesh always has one, 40ms kept",
        ),
        None => {}
    }
    let (w, h) = (r.int("width")?, r.int("height")?);
    if w.is_some() || h.is_some() {
        notes.approximate(
            format!(
                "[streammux] width={} height={}",
                w.map_or("-".into(), |v| v.to_string()),
                h.map_or("-".into(), |v| v.to_string())
            ),
            "vidmesh's mux batches frames at their own size without scaling them; the \
             preprocess stage scales for the network, and the OSD and sinks work at each \
             source's resolution",
        );
    }
    if r.int("enable-padding")?.unwrap_or(0) != 0 {
        notes.not_mapped(
            "[streammux] enable-padding=1",
            "frames are not scaled by the mux, so there is no padding (set \
             `maintain_aspect_ratio` on the preprocess stage to letterbox for the network)",
        );
    }
    if r.int("live-source")?.unwrap_or(0) != 0 {
        notes.approximate(
            "[streammux] live-source=1",
            "vidmesh needs no live flag: RTSP sources run at their own pace, files as fast as \
             the pipeline goes (a sink with `sync = true` plays them in real time)",
        );
    }
    notes.unused(r, None);
    Ok(table)
}
