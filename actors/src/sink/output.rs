//! One source's output pipeline for files, UDP and the display:
//! appsrc → [encoder chain] → muxer + filesink | splitmuxsink | RTP payloader + udpsink |
//! autovideosink.

use std::path::PathBuf;

use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use vidmesh_protocol::{FrameMeta, ImageLayout, PixelFormat};

use super::encoder::{self, ElementSpec};
use super::settings::{Container, Settings};
use crate::gst_util;
use crate::stage::StageError;

/// What follows the encoder.
#[derive(Debug, Clone)]
pub enum Tail {
    /// One file.
    File { path: PathBuf, container: Container },
    /// Keyframe-aligned pieces; `pattern` is a printf pattern with one `%05d`.
    Pieces {
        pattern: String,
        container: Container,
        max_duration: Option<std::time::Duration>,
        max_bytes: Option<u64>,
        max_files: Option<u32>,
    },
    /// RTP to a UDP address.
    Udp { host: String, port: u16 },
    /// A window; frames are not encoded.
    Display,
}

/// What a finished output reports.
#[derive(Debug, Clone)]
pub struct Finished {
    pub label: String,
    pub frames: u64,
    /// Rotated outputs: every piece written, in order.
    pub pieces: Vec<PathBuf>,
}

pub struct StreamOutput {
    /// The file, pattern or address, for messages.
    label: String,
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    bus: gst::Bus,
    layout: ImageLayout,
    frames: u64,
    first_pts: Option<u64>,
    pieces: Vec<PathBuf>,
    /// The pipeline said end-of-stream (everything is written).
    eos: bool,
}

/// The raw pixels of a frame, or why the sink cannot take it.
pub fn rgb_layout(frame: &FrameMeta) -> Result<ImageLayout, StageError> {
    let (layout, _) = frame.payload.inline_image().ok_or_else(|| {
        StageError::Input(format!(
            "sink needs raw pixels; frame payload is {}",
            frame.payload.kind_name()
        ))
    })?;
    if layout.format != PixelFormat::Rgb24 {
        return Err(StageError::Input(format!(
            "sink encodes RGB frames, got {:?}",
            layout.format
        )));
    }
    Ok(layout)
}

/// Caps of RGB frames shaped like `first`.
pub fn rgb_caps(layout: &ImageLayout, duration_ns: u64) -> Result<gst::Caps, StageError> {
    let ctx = |e: gst::glib::BoolError| StageError::runtime("cannot describe the frames", e);
    gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, layout.width, layout.height)
        // The nominal rate comes from the first frame's duration; every frame still carries
        // its own timestamp. 0/1 (variable) when the source does not say.
        .fps(nominal_rate(duration_ns))
        .build()
        .map_err(ctx)?
        .to_caps()
        .map_err(ctx)
}

/// A frame's pixels as a GStreamer buffer (shared, not copied, when rows are packed like the
/// first frame's), or an input error when its size changed.
pub fn frame_buffer(frame: &FrameMeta, expected: &ImageLayout) -> Result<gst::Buffer, StageError> {
    let (layout, data) = frame.payload.inline_image().ok_or_else(|| {
        StageError::Input(format!(
            "sink needs raw pixels; frame payload is {}",
            frame.payload.kind_name()
        ))
    })?;
    if (layout.width, layout.height, layout.format)
        != (expected.width, expected.height, expected.format)
    {
        return Err(StageError::Input(format!(
            "source `{}` changed resolution from {}x{} to {}x{} mid-stream; the sink cannot follow",
            frame.source_name, expected.width, expected.height, layout.width, layout.height
        )));
    }
    let packed = ImageLayout::packed(layout.format, layout.width, layout.height);
    let mut buffer = if layout.stride == packed.stride {
        gst::Buffer::from_slice(data.clone())
    } else {
        let row = layout.width as usize * 3;
        let mut v = vec![0u8; packed.min_len().unwrap_or(0)];
        for y in 0..layout.height as usize {
            let (s, d) = (y * layout.stride as usize, y * packed.stride as usize);
            let src = data.get(s..s + row).ok_or_else(|| {
                StageError::Input(format!(
                    "frame {} of `{}` has fewer bytes than its layout says",
                    frame.frame_num, frame.source_name
                ))
            })?;
            v[d..d + row].copy_from_slice(src);
        }
        gst::Buffer::from_mut_slice(v)
    };
    if let Some(b) = buffer.get_mut() {
        if frame.duration_ns > 0 {
            b.set_duration(gst::ClockTime::from_nseconds(frame.duration_ns));
        }
    }
    Ok(buffer)
}

impl StreamOutput {
    /// Starts an output sized for `first`. `label` names it in messages.
    pub fn start(
        label: String,
        first: &FrameMeta,
        settings: &Settings,
        tail: &Tail,
    ) -> Result<Self, StageError> {
        gst_util::init()?;
        let layout = rgb_layout(first)?;
        let setup = |e: gst::glib::BoolError| {
            StageError::runtime(format!("cannot set up the output {label}"), e)
        };
        let dir = match tail {
            Tail::File { path, .. } => path.parent().map(PathBuf::from),
            Tail::Pieces { pattern, .. } => {
                std::path::Path::new(pattern).parent().map(PathBuf::from)
            }
            _ => None,
        };
        if let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(&dir)
                .map_err(|e| StageError::runtime(format!("cannot create {}", dir.display()), e))?;
        }
        let appsrc = gst_app::AppSrc::builder()
            .caps(&rgb_caps(&layout, first.duration_ns)?)
            .format(gst::Format::Time)
            .max_bytes(4 * layout.min_len().unwrap_or(0) as u64)
            .build();
        let mut specs = match tail {
            Tail::Display => vec![ElementSpec::new("videoconvert")],
            Tail::Udp { .. } => encoder::chain(settings, true)?,
            _ => encoder::chain(settings, false)?,
        };
        let mut elements: Vec<gst::Element> = vec![appsrc.clone().upcast()];
        match tail {
            Tail::File { path, container } => {
                specs.push(ElementSpec::new(container.muxer()));
                specs.push(ElementSpec::new("filesink").with("location", path.display()));
            }
            Tail::Pieces {
                pattern,
                container,
                max_duration,
                max_bytes,
                max_files,
            } => {
                let split = gst_util::make("splitmuxsink")?;
                split.set_property("location", pattern);
                split.set_property("muxer", ElementSpec::new(container.muxer()).make()?);
                if let Some(d) = max_duration {
                    split.set_property("max-size-time", d.as_nanos() as u64);
                    // A keyframe where the time limit falls, so pieces keep their length
                    // whatever the keyframe interval (only effective without a size limit).
                    split.set_property("send-keyframe-requests", max_bytes.is_none());
                }
                if let Some(b) = max_bytes {
                    split.set_property("max-size-bytes", *b);
                }
                if let Some(n) = max_files {
                    split.set_property("max-files", *n);
                }
                for spec in &specs {
                    elements.push(spec.make()?);
                }
                elements.push(split);
                specs.clear();
            }
            Tail::Udp { host, port } => {
                specs.push(encoder::payloader(settings.codec));
                specs.push(
                    ElementSpec::new("udpsink")
                        .with("host", host)
                        .with("port", port)
                        // The stage paces frames itself (`sync`); the sink must not wait too.
                        .with("sync", false)
                        .with("async", false),
                );
            }
            Tail::Display => {
                specs.push(ElementSpec::new("autovideosink").with("sync", false));
            }
        }
        for spec in &specs {
            elements.push(spec.make()?);
        }
        let pipeline = gst::Pipeline::new();
        pipeline.add_many(&elements).map_err(setup)?;
        gst::Element::link_many(&elements).map_err(setup)?;
        let bus = pipeline
            .bus()
            .ok_or_else(|| StageError::Runtime("output pipeline has no bus".into()))?;
        if pipeline.set_state(gst::State::Playing).is_err() {
            let detail =
                gst_util::pending_error(&bus).unwrap_or_else(|| "it refused to start".into());
            let _ = pipeline.set_state(gst::State::Null);
            return Err(StageError::Runtime(format!(
                "cannot start the output {label}: {detail}"
            )));
        }
        tracing::info!(output = %label, width = layout.width, height = layout.height, codec = settings.codec.name(), "writing");
        Ok(Self {
            label,
            pipeline,
            appsrc,
            bus,
            layout,
            frames: 0,
            first_pts: None,
            pieces: Vec::new(),
            eos: false,
        })
    }

    fn error(&self, detail: impl std::fmt::Display) -> StageError {
        StageError::Runtime(format!("cannot write {}: {detail}", self.label))
    }

    /// Reads what the pipeline said since last time: the first error, pieces closed, and
    /// end-of-stream.
    fn read_bus(&mut self) -> Option<String> {
        while let Some(msg) = self.bus.pop() {
            if let Some(e) = self.handle(&msg) {
                return Some(e);
            }
        }
        None
    }

    /// Notes one bus message; returns the error it reports, if it is one.
    fn handle(&mut self, msg: &gst::Message) -> Option<String> {
        match msg.view() {
            gst::MessageView::Error(err) => return Some(gst_util::describe_error(err)),
            gst::MessageView::Eos(_) => self.eos = true,
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure() {
                    if s.name() == "splitmuxsink-fragment-closed" {
                        if let Ok(location) = s.get::<String>("location") {
                            self.pieces.push(PathBuf::from(location));
                        }
                    }
                }
            }
            _ => {}
        }
        None
    }

    pub fn push(&mut self, frame: &FrameMeta) -> Result<(), StageError> {
        let mut buffer = frame_buffer(frame, &self.layout)?;
        // Start the output at time zero whatever the source's clock says.
        let first = *self.first_pts.get_or_insert(frame.pts_ns);
        if let Some(b) = buffer.get_mut() {
            b.set_pts(gst::ClockTime::from_nseconds(
                frame.pts_ns.saturating_sub(first),
            ));
        }
        if let Some(e) = self.read_bus() {
            return Err(self.error(e));
        }
        let (appsrc, bus) = (self.appsrc.clone(), self.bus.clone());
        if let Err(e) = gst_util::push_when_room(&appsrc, &bus, buffer, |m| self.handle(m)) {
            return Err(self.error(e));
        }
        self.frames += 1;
        Ok(())
    }

    /// Ends the stream and waits until the container is finalised.
    pub fn finish(mut self) -> Result<Finished, StageError> {
        let _ = self.appsrc.end_of_stream();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let outcome = loop {
            if let Some(e) = self.read_bus() {
                break Err(self.error(e));
            }
            if self.eos {
                break Ok(());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break Err(self.error("the output did not finish within 60 s"));
            }
            let next = self
                .bus
                .timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64));
            if let Some(e) = next.and_then(|msg| self.handle(&msg)) {
                break Err(self.error(e));
            }
        };
        let _ = self.pipeline.set_state(gst::State::Null);
        outcome?;
        tracing::info!(output = %self.label, frames = self.frames, pieces = self.pieces.len(), "finished");
        Ok(Finished {
            label: self.label.clone(),
            frames: self.frames,
            pieces: std::mem::take(&mut self.pieces),
        })
    }

    /// Stops the pipeline after a failure, without waiting for anything.
    pub fn abandon(self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Frames per second as a fraction, from a frame duration (e.g. 33366666 ns → 30000/1001).
fn nominal_rate(duration_ns: u64) -> gst::Fraction {
    if duration_ns == 0 {
        return gst::Fraction::new(0, 1);
    }
    gst::Fraction::approximate_f64(1e9 / duration_ns as f64)
        .unwrap_or_else(|| gst::Fraction::new(0, 1))
}
