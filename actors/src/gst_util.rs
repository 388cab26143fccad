//! Small GStreamer helpers shared by the source and sink stages.

use std::sync::OnceLock;

use gst::prelude::*;
use gstreamer as gst;

use crate::stage::StageError;

/// Initialises GStreamer once per process.
pub fn init() -> Result<(), StageError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| gst::init().map_err(|e| format!("cannot initialise GStreamer: {e}")))
        .clone()
        .map_err(StageError::Runtime)
}

/// Makes an element, naming the missing plugin package when the factory does not exist.
pub fn make(factory: &str) -> Result<gst::Element, StageError> {
    gst::ElementFactory::make(factory).build().map_err(|_| {
        StageError::Runtime(format!(
            "GStreamer element `{factory}` is missing (install the gstreamer1.0-plugins-* package that provides it)"
        ))
    })
}

/// One line from a bus error: the message, and which element said it.
pub fn describe_error(err: &gst::message::Error) -> String {
    let element = err
        .src()
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| "pipeline".into());
    format!("{} (from {element})", err.error())
}

/// The first error waiting on the bus, if any.
pub fn pending_error(bus: &gst::Bus) -> Option<String> {
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(err) = msg.view() {
            return Some(describe_error(err));
        }
    }
    None
}

/// The error a bus message reports, if it is one.
pub fn error_of(msg: &gst::Message) -> Option<String> {
    match msg.view() {
        gst::MessageView::Error(err) => Some(describe_error(err)),
        _ => None,
    }
}

/// Pushes `buffer` into `appsrc` (built with `block(false)` and a `max_bytes` bound) once its
/// queue has room, watching `bus` meanwhile. With `block(true)` the wait happens inside
/// GStreamer, and when the pipeline has stopped on an error (a full disk) nothing drains the
/// queue again: the push never returns. Here the stopped pipeline's error ends the wait. Every
/// bus message seen while waiting (or after a refused push) goes to `seen`, which returns the
/// error it reports, if any.
pub fn push_when_room(
    appsrc: &gstreamer_app::AppSrc,
    bus: &gst::Bus,
    buffer: gst::Buffer,
    mut seen: impl FnMut(&gst::Message) -> Option<String>,
) -> Result<(), String> {
    let max = appsrc.max_bytes();
    while max > 0 && appsrc.current_level_bytes() >= max {
        // Short: the queue drains at the encoder's pace, and it still holds frames to encode.
        if let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(2)) {
            if let Some(e) = seen(&msg) {
                return Err(e);
            }
        }
    }
    appsrc.push_buffer(buffer).map(|_| ()).map_err(|flow| {
        // The refusal's cause is on the bus, when the pipeline said one.
        while let Some(msg) = bus.pop() {
            if let Some(e) = seen(&msg) {
                return e;
            }
        }
        format!("the pipeline stopped ({flow:?})")
    })
}
