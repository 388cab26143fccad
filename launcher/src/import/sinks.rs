//! `[osd]`, `[tiled-display]` and `[sinkN]`: the `osd` stage, file sinks, and (through
//! `broker`) message brokers.

use std::path::Path;

use super::broker::{self, BrokerOut};
use super::ini::{ConfigError, GroupReader};
use super::render::Table;
use super::Notes;

/// deepstream-app sink types (`NvDsSinkType`).
fn type_name(t: i64) -> &'static str {
    match t {
        1 => "fakesink",
        2 => "EGL display",
        3 => "file",
        4 => "RTSP streaming output",
        5 => "overlay / DRM display",
        6 => "message converter + broker",
        7 => "3D display",
        _ => "unknown type",
    }
}

/// What a sink group becomes.
#[derive(Debug)]
pub enum SinkOut {
    File(Table),
    Broker(BrokerOut),
}

/// What sinks need to know besides their group.
pub struct SinkContext<'a> {
    pub dir: &'a Path,
    pub source_ids: &'a [String],
    /// `[message-converter]`, used by type=6 sinks with `disable-msgconv=1`.
    pub msgconv_group: Option<&'a GroupReader<'a>>,
    /// Where a converted msgconv config is written (`None`: topology to standard output).
    pub msgconv_out: Option<&'a Path>,
    /// A `tile` stage composes the sources before the video sinks: they see one stream.
    pub tiled: bool,
}

/// `[sinkN]` → a stage, or `None` (reported) when vidmesh has nothing for it.
pub fn sink(
    r: &GroupReader<'_>,
    ctx: &SinkContext<'_>,
    notes: &mut Notes,
) -> Result<Option<SinkOut>, ConfigError> {
    if !r.enabled(false)? {
        return Ok(None);
    }
    let name = r.name().to_string();
    let kind = r.int("type")?.unwrap_or(0);
    let place = format!("[{name}] type={kind} ({})", type_name(kind));
    let out = match kind {
        1 => {
            notes.not_mapped(
                place,
                "a fakesink only discards frames; vidmesh needs no stage for that",
            );
            None
        }
        2 | 5 | 7 => {
            notes.not_mapped(
                place,
                "not converted: a display needs a graphical session, which a converted \
                 topology cannot assume; add a `display://` sink by hand, or use a file sink \
                 (type=3)",
            );
            None
        }
        3 => Some(SinkOut::File(file_sink(r, ctx, notes)?)),
        4 => Some(SinkOut::File(rtsp_sink(r, ctx, notes)?)),
        6 => broker::broker_sink(r, ctx, notes)?.map(SinkOut::Broker),
        _ => {
            notes.not_mapped(place, "not a sink type deepstream-app defines");
            None
        }
    };
    if out.is_none() {
        // The whole group is reported; its keys need no lines of their own.
        for e in r.entries() {
            r.touch(&e.key);
        }
    }
    r.touch("enable");
    notes.unused(r, None);
    Ok(out)
}

/// type=3: an MP4 or MKV file.
fn file_sink(
    r: &GroupReader<'_>,
    ctx: &SinkContext<'_>,
    notes: &mut Notes,
) -> Result<Table, ConfigError> {
    let name = r.name().to_string();
    let mut path = match r.string("output-file")? {
        Some(p) if !p.trim().is_empty() => p.trim().to_string(),
        _ => {
            let p = format!("out_{name}.mp4");
            notes.approximate(
                format!("[{name}] output-file"),
                format!("not set; `{p}` written"),
            );
            p
        }
    };
    let container = r.int("container")?.unwrap_or(1);
    let ext = match container {
        2 => "mkv",
        1 => "mp4",
        other => {
            notes.approximate(
                format!("[{name}] container={other}"),
                "deepstream-app knows 1 (MP4) and 2 (MKV); MP4 written",
            );
            "mp4"
        }
    };
    if !path.to_ascii_lowercase().ends_with(&format!(".{ext}")) {
        let stem = match path.rfind('.') {
            Some(dot) if dot > path.rfind('/').map_or(0, |s| s + 1) => path[..dot].to_string(),
            _ => path.clone(),
        };
        let fixed = format!("{stem}.{ext}");
        notes.approximate(
            format!("[{name}] container={container} output-file={path}"),
            format!("vidmesh picks the container by the file's extension; `{fixed}` written"),
        );
        path = fixed;
    }
    if ctx.source_ids.len() > 1 && !ctx.tiled {
        let templated = match path.strip_suffix(&format!(".{ext}")) {
            Some(stem) => format!("{stem}_{{source}}.{ext}"),
            None => path.clone(),
        };
        notes.approximate(
            format!("[{name}] output-file={path}"),
            format!(
                "{} sources and no tiler: one file per source, `{templated}` ({{source}} is the \
                 source id)",
                ctx.source_ids.len()
            ),
        );
        path = templated;
    }
    let mut table = Table::default();
    table
        .set("kind", "sink")
        .set("uri", format!("file://{path}"));
    encoder_keys(r, &mut table, notes)?;
    if let Some(id) = r.int("source-id")? {
        if ctx.source_ids.len() > 1 && r.bool("link-to-demux")?.unwrap_or(false) {
            notes.approximate(
                format!("[{name}] link-to-demux=1 source-id={id}"),
                "the file sink writes every source (one file each), not only this one",
            );
        }
    }
    r.touch("link-to-demux");
    r.touch("qos");
    Ok(table)
}

/// type=4: deepstream-app's RTSP server (`rtsp://HOST:rtsp-port/ds-test`) → an `rtsp://` sink
/// on every interface at that port and mount.
fn rtsp_sink(
    r: &GroupReader<'_>,
    ctx: &SinkContext<'_>,
    notes: &mut Notes,
) -> Result<Table, ConfigError> {
    let name = r.name().to_string();
    let port = match r.int("rtsp-port")?.unwrap_or(8554) {
        p @ 1..=65535 => p,
        p => {
            return Err(r.error(
                "rtsp-port",
                format!("[{name}] rtsp-port must be 1..=65535, got {p}"),
            ))
        }
    };
    // The UDP port carries the encoded stream from deepstream-app's encoder to its own RTSP
    // server; vidmesh's server takes the frames directly.
    r.touch("udp-port");
    if ctx.source_ids.len() > 1 && !ctx.tiled {
        notes.approximate(
            format!("[{name}] type=4 rtsp-port={port}"),
            format!(
                "{} sources and no tiler: each source is served at \
                 rtsp://HOST:{port}/ds-test/<source id>",
                ctx.source_ids.len()
            ),
        );
    }
    let mut table = Table::default();
    table
        .set("kind", "sink")
        .set("uri", format!("rtsp://0.0.0.0:{port}/ds-test"));
    encoder_keys(r, &mut table, notes)?;
    for key in ["source-id", "link-to-demux", "qos"] {
        r.touch(key);
    }
    Ok(table)
}

/// The encoder keys file and RTSP sinks share: codec, bitrate, keyframe interval, sync, profile.
fn encoder_keys(
    r: &GroupReader<'_>,
    table: &mut Table,
    notes: &mut Notes,
) -> Result<(), ConfigError> {
    let name = r.name();
    match r.int("codec")?.unwrap_or(1) {
        1 => {}
        2 => {
            table.set("codec", "h265");
        }
        other => notes.approximate(
            format!(
                "[{name}] codec={other} ({})",
                if other == 3 { "MPEG-4" } else { "unknown" }
            ),
            "vidmesh encodes H.264 or H.265; H.264 written",
        ),
    }
    if let Some(bps) = r.int("bitrate")? {
        if bps > 0 {
            table.set("bitrate_kbps", (bps / 1000).clamp(1, 2_000_000));
        }
    }
    if let Some(n) = r.int("iframeinterval")? {
        if n > 0 {
            table.set("key_int_max", n);
        }
    }
    if let Some(sync) = r.bool("sync")? {
        table.set("sync", sync);
    }
    if let Some(profile) = r.int("profile")? {
        if profile != 0 {
            notes.approximate(
                format!("[{name}] profile={profile}"),
                "the encoder picks the profile for its settings (High for H.264, Main for H.265)",
            );
        }
    }
    Ok(())
}

/// `[osd]` → the `osd` stage.
pub fn osd(
    r: &GroupReader<'_>,
    show_track_id: bool,
    notes: &mut Notes,
) -> Result<Table, ConfigError> {
    let mut table = Table::default();
    table.set("kind", "osd");
    if let Some(w) = r.int("border-width")? {
        if w >= 0 {
            table.set("border_width", w);
        }
    }
    if let Some(size) = r.float("text-size")? {
        if size > 0.0 {
            table.set("font_size", size);
        }
    }
    if !show_track_id {
        table.set("show_track_id", false);
    }
    if let Some(font) = r.string("font")? {
        notes.approximate(
            format!("[osd] font={font}"),
            "vidmesh's `font` is a TrueType file, not a family name; DejaVu Sans is used",
        );
    }
    for key in ["text-color", "text-bg-color"] {
        if let Some(c) = r.string(key)? {
            notes.not_mapped(
                format!("[osd] {key}={c}"),
                "labels are drawn in their box's colour",
            );
        }
    }
    if r.int("show-clock")?.unwrap_or(0) != 0 {
        notes.not_mapped("[osd] show-clock=1", "vidmesh draws no clock");
    }
    for key in [
        "clock-x-offset",
        "clock-y-offset",
        "clock-text-size",
        "clock-color",
        "show-clock",
    ] {
        r.touch(key);
    }
    for key in ["display-text", "display-bbox"] {
        if r.int(key)? == Some(0) {
            notes.not_mapped(
                format!("[osd] {key}=0"),
                "vidmesh's OSD always draws boxes and labels",
            );
        }
    }
    if r.int("display-mask")?.unwrap_or(0) != 0 {
        notes.not_mapped("[osd] display-mask=1", "vidmesh has no instance masks");
    }
    r.touch("process-mode");
    r.touch("enable");
    notes.unused(r, None);
    Ok(table)
}

/// `[tiled-display]` with `enable=1` → the `tile` stage (nvmultistreamtiler), or `None`.
pub fn tiled_display(
    r: &GroupReader<'_>,
    sources: usize,
    notes: &mut Notes,
) -> Result<Option<Table>, ConfigError> {
    if r.int("enable")?.unwrap_or(0) == 0 {
        for e in r.entries() {
            r.touch(&e.key);
        }
        return Ok(None);
    }
    let mut table = Table::default();
    table.set("kind", "tile");
    let mut cells = 1i64;
    for key in ["rows", "columns"] {
        match r.int(key)? {
            Some(n @ 1..=1024) => {
                table.set(key, n);
                cells *= n;
            }
            Some(n) => notes.approximate(
                format!("[tiled-display] {key}={n}"),
                "not 1..=1024; left to the tile stage (the smallest square grid)",
            ),
            None => cells = i64::MAX,
        }
    }
    if cells < sources as i64 {
        notes.approximate(
            "[tiled-display] rows columns",
            format!(
                "{cells} cells for {sources} sources: the sources beyond the grid are left out"
            ),
        );
    }
    for key in ["width", "height"] {
        match r.int(key)? {
            Some(v @ 16..=8192) => {
                table.set(key, v - v % 2);
            }
            Some(v) => notes.approximate(
                format!("[tiled-display] {key}={v}"),
                "not 16..=8192; the tile stage's default (1280x720) written",
            ),
            None => {}
        }
    }
    r.touch("enable");
    notes.unused(r, None);
    Ok(Some(table))
}
