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
