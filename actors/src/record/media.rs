//! The GStreamer side of `record` and `snapshot`: reading frame pixels, the per-source H.264
//! encoder feeding the pre-roll ring, clip files, and JPEG images.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use vidmesh_protocol::{FrameMeta, ImageLayout, PixelFormat};

use super::ring::EncodedSample;
use crate::gst_util;
use crate::stage::StageError;

/// A frame's raw pixels, or an error naming the stage, the source and the frame.
pub fn frame_image<'a>(
    stage: &str,
    frame: &'a FrameMeta,
) -> Result<(ImageLayout, &'a Bytes), StageError> {
    let (layout, data) = frame.payload.inline_image().ok_or_else(|| {
        StageError::Input(format!(
            "{stage} needs raw pixels in memory; frame {} of source `{}` has payload {}",
            frame.frame_num,
            frame.source_name,
            frame.payload.kind_name()
        ))
    })?;
    video_format(layout.format).map_err(|f| {
        StageError::Input(format!(
            "{stage} takes RGB or RGBA frames; frame {} of source `{}` is {f:?}",
            frame.frame_num, frame.source_name
        ))
    })?;
    Ok((layout, data))
}

fn video_format(format: PixelFormat) -> Result<gst_video::VideoFormat, PixelFormat> {
    match format {
        PixelFormat::Rgb24 => Ok(gst_video::VideoFormat::Rgb),
        PixelFormat::Rgba32 => Ok(gst_video::VideoFormat::Rgba),
        other => Err(other),
    }
}

/// The pixels of the `w` x `h` region at (`x`, `y`) (already inside the image) in GStreamer's
/// default layout for the format (rows padded to 4 bytes), as one buffer.
pub fn region(layout: ImageLayout, data: &Bytes, x: u32, y: u32, w: u32, h: u32) -> gst::Buffer {
    let packed = ImageLayout::packed(layout.format, w, h);
    if (x, y, w, h) == (0, 0, layout.width, layout.height)
        && packed.stride == layout.stride
        && data.len() >= packed.stride as usize * h as usize
    {
        // Share the frame's memory: no copy.
        return gst::Buffer::from_slice(data.clone());
    }
    let bpp = layout.format.bytes_per_pixel();
    let row = w as usize * bpp;
    // GStreamer sizes raw video as stride x height, last row's padding included.
    let mut out = vec![0u8; packed.stride as usize * h as usize];
    for r in 0..h as usize {
        let s = (y as usize + r) * layout.stride as usize + x as usize * bpp;
        let d = r * packed.stride as usize;
        out[d..d + row].copy_from_slice(&data[s..s + row]);
    }
    gst::Buffer::from_mut_slice(out)
}

fn raw_caps(format: PixelFormat, width: u32, height: u32, fps: gst::Fraction) -> gst::Caps {
    // Only RGB/RGBA reach here (checked by `frame_image`).
    let format = video_format(format).unwrap_or(gst_video::VideoFormat::Rgb);
    gst_video::VideoCapsBuilder::new()
        .format(format)
        .width(width as i32)
        .height(height as i32)
        .framerate(fps)
        .build()
}

/// Frames per second as a fraction from a frame duration; 0/1 (variable) when unknown.
fn nominal_rate(duration_ns: u64) -> gst::Fraction {
    if duration_ns == 0 {
        return gst::Fraction::new(0, 1);
    }
    gst::Fraction::approximate_f64(1e9 / duration_ns as f64)
        .unwrap_or_else(|| gst::Fraction::new(0, 1))
}

/// Waits for the end of a pipeline that was sent EOS; `what` names it in errors.
fn wait_for_eos(bus: &gst::Bus, what: &str) -> Result<(), StageError> {
    match bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(60),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    ) {
        Some(msg) => match msg.view() {
            gst::MessageView::Error(err) => Err(StageError::Runtime(format!(
                "{what}: {}",
                gst_util::describe_error(err)
            ))),
            _ => Ok(()),
        },
        None => Err(StageError::Runtime(format!(
            "{what}: did not finish within 60 s"
        ))),
    }
}

/// A pipeline of `elements` linked in order, and its bus; `what` names it in errors.
fn linked(elements: &[&gst::Element], what: &str) -> Result<(gst::Pipeline, gst::Bus), StageError> {
    let ctx = |e: gst::glib::BoolError| StageError::runtime(what, e);
    let pipeline = gst::Pipeline::new();
    pipeline.add_many(elements).map_err(ctx)?;
    gst::Element::link_many(elements).map_err(ctx)?;
    let bus = pipeline
        .bus()
        .ok_or_else(|| StageError::Runtime(format!("{what}: pipeline has no bus")))?;
    Ok((pipeline, bus))
}

fn start(pipeline: &gst::Pipeline, bus: &gst::Bus, what: &str) -> Result<(), StageError> {
    if pipeline.set_state(gst::State::Playing).is_err() {
        let detail = gst_util::pending_error(bus).unwrap_or_else(|| "it refused to start".into());
        return Err(StageError::Runtime(format!(
            "{what}: cannot start: {detail}"
        )));
    }
    Ok(())
}

/// x264 settings of the pre-roll encoder.
#[derive(Debug, Clone)]
pub struct EncoderSettings {
    pub bitrate_kbps: u32,
    pub speed_preset: String,
    pub key_int_max: u32,
}

/// One source's continuous encoder: appsrc → videoconvert → I420 → x264enc → h264parse →
/// appsink. Samples come out as H.264 byte-stream access units with SPS/PPS on every
/// keyframe, so any keyframe can start a clip.
pub struct H264Encoder {
    what: String,
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    appsink: gst_app::AppSink,
    bus: gst::Bus,
    layout: ImageLayout,
    /// (pts, frame number) of frames pushed and not yet come out, oldest first.
    pending: VecDeque<(u64, u64)>,
    last_pts: Option<u64>,
    /// The encoder's output caps, known from the first sample on.
    caps: Option<gst::Caps>,
}

impl H264Encoder {
    /// An encoder sized for `first`, which must carry RGB/RGBA pixels.
    pub fn start(
        stage: &str,
        first: &FrameMeta,
        settings: &EncoderSettings,
    ) -> Result<Self, StageError> {
        gst_util::init()?;
        let (layout, _) = frame_image(stage, first)?;
        let what = format!("{stage}: encoder of source `{}`", first.source_name);
        let appsrc = gst_app::AppSrc::builder()
            .caps(&raw_caps(
                layout.format,
                layout.width,
                layout.height,
                nominal_rate(first.duration_ns),
            ))
            .format(gst::Format::Time)
            .max_bytes(4 * layout.min_len().unwrap_or(0) as u64)
            .build();
        let convert = gst_util::make("videoconvert")?;
        // 4:2:0 so every player and NVDEC can decode the clips (see the sink stage).
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
        // No B-frames and no look-ahead (zerolatency): samples come out in presentation order
        // right behind their frames, so a clip's end is exact. No scene-cut keyframes: the GOP
        // is fixed, as the pre-roll alignment documents.
        encoder.set_property_from_str("tune", "zerolatency");
        encoder.set_property("option-string", "scenecut=0");
        let profile = gst_util::make("capsfilter")?;
        profile.set_property(
            "caps",
            gst::Caps::builder("video/x-h264")
                .field("profile", "high")
                .build(),
        );
        let parse = gst_util::make("h264parse")?;
        // SPS/PPS in front of every IDR: each keyframe can start a file.
        parse.set_property("config-interval", -1i32);
        let appsink = gst_app::AppSink::builder()
            .caps(
                &gst::Caps::builder("video/x-h264")
                    .field("stream-format", "byte-stream")
                    .field("alignment", "au")
                    .build(),
            )
            .sync(false)
            .build();
        let elements = [
            appsrc.upcast_ref(),
            &convert,
            &yuv,
            &encoder,
            &profile,
            &parse,
            appsink.upcast_ref(),
        ];
        let (pipeline, bus) = linked(&elements, &what)?;
        start(&pipeline, &bus, &what)?;
        Ok(Self {
            what,
            pipeline,
            appsrc,
            appsink,
            bus,
            layout,
            pending: VecDeque::new(),
            last_pts: None,
            caps: None,
        })
    }

    /// The output caps (for clip files); known once a sample came out.
    pub fn caps(&self) -> Option<&gst::Caps> {
        self.caps.as_ref()
    }

    /// Queues a frame for encoding.
    pub fn push(&mut self, frame: &FrameMeta) -> Result<(), StageError> {
        let (layout, data) = frame_image(&self.what, frame)?;
        if (layout.width, layout.height, layout.format)
            != (self.layout.width, self.layout.height, self.layout.format)
        {
            return Err(StageError::Input(format!(
                "{}: the frames changed from {}x{} {:?} to {}x{} {:?} at frame {}; clips cannot follow",
                self.what,
                self.layout.width,
                self.layout.height,
                self.layout.format,
                layout.width,
                layout.height,
                layout.format,
                frame.frame_num
            )));
        }
        let mut buffer = region(layout, data, 0, 0, layout.width, layout.height);
        // The encoder needs strictly increasing timestamps; a repeated pts (a source glitch)
        // is nudged by a nanosecond rather than failing the stream.
        let pts = match self.last_pts {
            Some(last) if frame.pts_ns <= last => last + 1,
            _ => frame.pts_ns,
        };
        self.last_pts = Some(pts);
        if let Some(b) = buffer.get_mut() {
            b.set_pts(gst::ClockTime::from_nseconds(pts));
            if frame.duration_ns > 0 {
                b.set_duration(gst::ClockTime::from_nseconds(frame.duration_ns));
            }
        }
        if let Some(e) = gst_util::pending_error(&self.bus) {
            return Err(StageError::Runtime(format!("{}: {e}", self.what)));
        }
        self.pending.push_back((pts, frame.frame_num));
        gst_util::push_when_room(&self.appsrc, &self.bus, buffer, gst_util::error_of)
            .map_err(|e| StageError::Runtime(format!("{}: {e}", self.what)))?;
        Ok(())
    }

    /// The samples encoded so far, without waiting.
    pub fn ready(&mut self) -> Result<Vec<EncodedSample>, StageError> {
        let mut out = Vec::new();
        while let Some(sample) = self.appsink.try_pull_sample(gst::ClockTime::ZERO) {
            out.push(self.convert(&sample)?);
        }
        Ok(out)
    }

    fn convert(&mut self, sample: &gst::Sample) -> Result<EncodedSample, StageError> {
        if self.caps.is_none() {
            self.caps = sample.caps().map(|c| c.to_owned());
        }
        let buffer = sample
            .buffer()
            .ok_or_else(|| StageError::Runtime(format!("{}: a sample without data", self.what)))?;
        // Without B-frames samples come out in the order frames went in, one each. Their
        // timestamps do not identify the frame (x264enc shifts them by 1000 hours so decode
        // times never go negative), so the sample takes the frame's own time and number.
        let (pts, frame_num) = self.pending.pop_front().ok_or_else(|| {
            StageError::Runtime(format!(
                "{}: the encoder gave more samples than frames went in",
                self.what
            ))
        })?;
        let map = buffer
            .map_readable()
            .map_err(|e| StageError::Runtime(format!("{}: unreadable sample: {e}", self.what)))?;
        Ok(EncodedSample {
            pts_ns: pts,
            duration_ns: buffer.duration().map(|d| d.nseconds()).unwrap_or_default(),
            frame_num,
            keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
            data: Bytes::copy_from_slice(map.as_slice()),
        })
    }

    /// Ends the stream and returns the samples still inside the encoder.
    pub fn finish(mut self) -> Result<Vec<EncodedSample>, StageError> {
        let _ = self.appsrc.end_of_stream();
        let mut out = Vec::new();
        let result = loop {
            match self
                .appsink
                .try_pull_sample(gst::ClockTime::from_seconds(60))
            {
                Some(sample) => match self.convert(&sample) {
                    Ok(s) => out.push(s),
                    Err(e) => break Err(e),
                },
                None if self.appsink.is_eos() => break Ok(out),
                None => {
                    let detail = gst_util::pending_error(&self.bus)
                        .unwrap_or_else(|| "no end of stream within 60 s".into());
                    break Err(StageError::Runtime(format!("{}: {detail}", self.what)));
                }
            }
        };
        let _ = self.pipeline.set_state(gst::State::Null);
        result
    }
}

impl Drop for H264Encoder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// One clip being written: appsrc (H.264 byte-stream) → h264parse → mp4mux → filesink.
/// Timestamps are rebased so the file starts at zero.
pub struct ClipWriter {
    path: PathBuf,
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    bus: gst::Bus,
    base_pts: u64,
    finished: bool,
}

impl ClipWriter {
    /// Starts a file whose first sample (a keyframe) has `base_pts`.
    pub fn start(path: &Path, caps: &gst::Caps, base_pts: u64) -> Result<Self, StageError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StageError::runtime(format!("cannot create {}", dir.display()), e))?;
        }
        let what = format!("cannot write {}", path.display());
        let appsrc = gst_app::AppSrc::builder()
            .caps(caps)
            .format(gst::Format::Time)
            .build();
        let parse = gst_util::make("h264parse")?;
        let mux = gst_util::make("mp4mux")?;
        let file = gst_util::make("filesink")?;
        file.set_property("location", path.to_string_lossy().to_string());
        let elements = [appsrc.upcast_ref(), &parse, &mux, &file];
        let (pipeline, bus) = linked(&elements, &what)?;
        start(&pipeline, &bus, &what)?;
        Ok(Self {
            path: path.to_path_buf(),
            pipeline,
            appsrc,
            bus,
            base_pts,
            finished: false,
        })
    }

    pub fn push(&mut self, sample: &EncodedSample) -> Result<(), StageError> {
        let mut buffer = gst::Buffer::from_slice(sample.data.clone());
        if let Some(b) = buffer.get_mut() {
            // No B-frames: decode order is presentation order.
            let t = gst::ClockTime::from_nseconds(sample.pts_ns.saturating_sub(self.base_pts));
            b.set_pts(t);
            b.set_dts(t);
            if sample.duration_ns > 0 {
                b.set_duration(gst::ClockTime::from_nseconds(sample.duration_ns));
            }
            if !sample.keyframe {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        if let Some(e) = gst_util::pending_error(&self.bus) {
            return Err(StageError::Runtime(format!(
                "cannot write {}: {e}",
                self.path.display()
            )));
        }
        gst_util::push_when_room(&self.appsrc, &self.bus, buffer, gst_util::error_of).map_err(
            |e| StageError::Runtime(format!("cannot write {}: {e}", self.path.display())),
        )?;
        Ok(())
    }

    /// Ends the file and waits until the MP4 index is written.
    pub fn finish(mut self) -> Result<PathBuf, StageError> {
        self.finished = true;
        let _ = self.appsrc.end_of_stream();
        let outcome = wait_for_eos(&self.bus, &format!("cannot write {}", self.path.display()));
        let _ = self.pipeline.set_state(gst::State::Null);
        outcome.map(|_| self.path.clone())
    }
}

impl Drop for ClipWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.pipeline.set_state(gst::State::Null);
        }
    }
}

/// Encodes one RGB/RGBA image (GStreamer's default stride) as JPEG with `jpegenc`.
pub fn encode_jpeg(
    format: PixelFormat,
    width: u32,
    height: u32,
    pixels: gst::Buffer,
    quality: u32,
) -> Result<Vec<u8>, StageError> {
    gst_util::init()?;
    let what = format!("cannot encode a {width}x{height} JPEG");
    let appsrc = gst_app::AppSrc::builder()
        .caps(&raw_caps(format, width, height, gst::Fraction::new(0, 1)))
        .format(gst::Format::Time)
        .build();
    let convert = gst_util::make("videoconvert")?;
    let encoder = gst_util::make("jpegenc")?;
    encoder.set_property("quality", quality as i32);
    let appsink = gst_app::AppSink::builder().sync(false).build();
    let elements = [
        appsrc.upcast_ref(),
        &convert,
        &encoder,
        appsink.upcast_ref(),
    ];
    let (pipeline, bus) = linked(&elements, &what)?;
    let result = (|| {
        start(&pipeline, &bus, &what)?;
        let mut pixels = pixels;
        if let Some(b) = pixels.get_mut() {
            b.set_pts(gst::ClockTime::ZERO);
        }
        appsrc
            .push_buffer(pixels)
            .map_err(|e| StageError::Runtime(format!("{what}: encoder stopped ({e:?})")))?;
        let _ = appsrc.end_of_stream();
        let sample = appsink
            .try_pull_sample(gst::ClockTime::from_seconds(30))
            .ok_or_else(|| {
                let detail =
                    gst_util::pending_error(&bus).unwrap_or_else(|| "no image within 30 s".into());
                StageError::Runtime(format!("{what}: {detail}"))
            })?;
        let buffer = sample
            .buffer()
            .ok_or_else(|| StageError::Runtime(format!("{what}: an empty sample")))?;
        let map = buffer
            .map_readable()
            .map_err(|e| StageError::Runtime(format!("{what}: {e}")))?;
        Ok(map.as_slice().to_vec())
    })();
    let _ = pipeline.set_state(gst::State::Null);
    result
}
