//! One source's encoder: appsrc → videoconvert → x264enc → h264parse → mp4mux → filesink.

use std::path::{Path, PathBuf};

use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use vidmesh_protocol::{FrameMeta, ImageLayout, PixelFormat};

use super::Settings;
use crate::gst_util;
use crate::stage::StageError;

pub struct Mp4Writer {
    path: PathBuf,
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    bus: gst::Bus,
    layout: ImageLayout,
    frames: u64,
    first_pts: Option<u64>,
}

impl Mp4Writer {
    /// Starts an encoder sized for `first`.
    pub fn start(path: &Path, first: &FrameMeta, settings: &Settings) -> Result<Self, StageError> {
        gst_util::init()?;
        let (layout, _) = first.payload.inline_image().ok_or_else(|| {
            StageError::Input(format!(
                "sink needs raw pixels; frame payload is {}",
                first.payload.kind_name()
            ))
        })?;
        if layout.format != PixelFormat::Rgb24 {
            return Err(StageError::Input(format!(
                "sink encodes RGB frames, got {:?}",
                layout.format
            )));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StageError::runtime(format!("cannot create {}", dir.display()), e))?;
        }
        let ctx = |e: gst::glib::BoolError| {
            StageError::runtime(
                format!("cannot set up the encoder for {}", path.display()),
                e,
            )
        };
        let caps =
            gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, layout.width, layout.height)
                // The nominal rate comes from the first frame's duration; every frame still
                // carries its own timestamp. 0/1 (variable) when the source does not say.
                .fps(nominal_rate(first.duration_ns))
                .build()
                .map_err(ctx)?
                .to_caps()
                .map_err(ctx)?;
        let appsrc = gst_app::AppSrc::builder()
            .caps(&caps)
            .format(gst::Format::Time)
            .block(true)
            .max_bytes(4 * layout.min_len().unwrap_or(0) as u64)
            .build();
        let convert = gst_util::make("videoconvert")?;
        // Without this, videoconvert picks the format closest to RGB (Y444) and x264 encodes
        // High 4:4:4: slower, and not decodable by NVDEC or most players.
        let yuv = gst_util::make("capsfilter")?;
        yuv.set_property(
            "caps",
            gst_video::VideoCapsBuilder::new()
                .format(gst_video::VideoFormat::I420)
                .build(),
        );
        let encoder = gst_util::make("x264enc")?;
        encoder.set_property("bitrate", settings.bitrate_kbps);
        encoder.set_property_from_str("speed-preset", &settings.speed_preset);
        encoder.set_property("key-int-max", settings.key_int_max);
        let caps_filter = gst_util::make("capsfilter")?;
        // High profile 4:2:0 so every player (and NVDEC) can decode the result.
        caps_filter.set_property(
            "caps",
            gst::Caps::builder("video/x-h264")
                .field("profile", "high")
                .build(),
        );
        let parse = gst_util::make("h264parse")?;
        let mux = gst_util::make("mp4mux")?;
        let file = gst_util::make("filesink")?;
        file.set_property("location", path.to_string_lossy().to_string());
        let pipeline = gst::Pipeline::new();
        let elements = [
            appsrc.upcast_ref(),
            &convert,
            &encoder,
            &caps_filter,
            &parse,
            &mux,
            &file,
        ];
        pipeline.add_many(elements).map_err(ctx)?;
        gst::Element::link_many(elements).map_err(ctx)?;
        let bus = pipeline
            .bus()
            .ok_or_else(|| StageError::Runtime("encoder pipeline has no bus".into()))?;
        if pipeline.set_state(gst::State::Playing).is_err() {
            let detail =
                gst_util::pending_error(&bus).unwrap_or_else(|| "it refused to start".into());
            return Err(StageError::Runtime(format!(
                "cannot start the encoder for {}: {detail}",
                path.display()
            )));
        }
        tracing::info!(path = %path.display(), width = layout.width, height = layout.height, "encoding");
        Ok(Self {
            path: path.to_path_buf(),
            pipeline,
            appsrc,
            bus,
            layout,
            frames: 0,
            first_pts: None,
        })
    }

    fn error(&self, detail: impl std::fmt::Display) -> StageError {
        StageError::Runtime(format!("cannot write {}: {detail}", self.path.display()))
    }

    pub fn push(&mut self, frame: &FrameMeta) -> Result<(), StageError> {
        let (layout, data) = frame.payload.inline_image().ok_or_else(|| {
            StageError::Input(format!(
                "sink needs raw pixels; frame payload is {}",
                frame.payload.kind_name()
            ))
        })?;
        if (layout.width, layout.height, layout.format)
            != (self.layout.width, self.layout.height, self.layout.format)
        {
            return Err(StageError::Input(format!(
                "source `{}` changed resolution from {}x{} to {}x{} mid-stream; the MP4 sink cannot follow",
                frame.source_name, self.layout.width, self.layout.height, layout.width, layout.height
            )));
        }
        let mut buffer = if layout.stride == self.layout.stride {
            // Share the frame's memory with GStreamer: no copy.
            gst::Buffer::from_slice(data.clone())
        } else {
            let packed = ImageLayout::packed(layout.format, layout.width, layout.height);
            let row = layout.width as usize * 3;
            let mut v = vec![0u8; packed.min_len().unwrap_or(0)];
            for y in 0..layout.height as usize {
                let (s, d) = (y * layout.stride as usize, y * packed.stride as usize);
                v[d..d + row].copy_from_slice(&data[s..s + row]);
            }
            gst::Buffer::from_mut_slice(v)
        };
        // Start the file at time zero whatever the source's clock says.
        let first = *self.first_pts.get_or_insert(frame.pts_ns);
        if let Some(b) = buffer.get_mut() {
            if frame.duration_ns > 0 {
                b.set_duration(gst::ClockTime::from_nseconds(frame.duration_ns));
            }
            b.set_pts(gst::ClockTime::from_nseconds(
                frame.pts_ns.saturating_sub(first),
            ));
        }
        if let Some(e) = gst_util::pending_error(&self.bus) {
            return Err(self.error(e));
        }
        self.appsrc
            .push_buffer(buffer)
            .map_err(|e| self.error(format!("encoder stopped ({e:?})")))?;
        self.frames += 1;
        Ok(())
    }

    /// Ends the stream and waits until the MP4 index is written.
    pub fn finish(self) -> Result<(PathBuf, u64), StageError> {
        let _ = self.appsrc.end_of_stream();
        let outcome = match self.bus.timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        ) {
            Some(msg) => match msg.view() {
                gst::MessageView::Error(err) => Err(self.error(gst_util::describe_error(err))),
                _ => Ok(()),
            },
            None => Err(self.error("the encoder did not finish within 60 s")),
        };
        let _ = self.pipeline.set_state(gst::State::Null);
        outcome?;
        tracing::info!(path = %self.path.display(), frames = self.frames, "finished");
        Ok((self.path, self.frames))
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
