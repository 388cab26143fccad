//! `zenoh-shm-peer`: the bare-zenoh shared-memory peer of `transport-bench`, written as zenoh's
//! own shared-memory example does it — a `ShmProvider` over a POSIX backend, a buffer
//! allocated per message (blocking until the consumer frees one), written, then
//! `publisher.put(buffer)`.
//!
//! A separate build because zenoh's `shared-memory` feature, once compiled in, also carries
//! large *ordinary* messages through shared memory; vidmesh's TCP cells must not get that.
//! Roles: `consume`, `produce`, with the options of `transport-bench`'s roles; `--variant copy`
//! copies a whole source frame into every buffer, `--variant prefilled` writes only the
//! 16-byte header (the frame is taken to be in shared memory already).

#[path = "../../src/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "../../src/zenoh_roles.rs"]
mod zenoh_roles;

use common::{source_frame, write_header, RoleArgs, HEADER_BYTES};
use zenoh::shm::{BlockOn, GarbageCollect, PosixShmProviderBackend, ShmProviderBuilder};
use zenoh::Wait;

fn produce(args: &RoleArgs) -> Result<(), String> {
    let len = args.payload.bytes();
    // As many frames as vidmesh's slot pool holds, each rounded up to a page, plus slack for
    // the allocator's own bookkeeping.
    let pool_bytes = args.slots as usize * len.next_multiple_of(4096) + (1 << 20);
    let backend = PosixShmProviderBackend::builder(pool_bytes)
        .wait()
        .map_err(|e| format!("shared-memory backend of {pool_bytes} bytes: {e}"))?;
    let provider = ShmProviderBuilder::backend(backend).wait();
    let layout = provider
        .alloc_layout(len)
        .map_err(|e| format!("layout of {len} bytes: {e}"))?;
    let copy = args.variant == "copy";
    let source = source_frame(len);
    let config = zenoh_roles::config(None, Some(&args.endpoint))?;
    zenoh_roles::produce(args, config, |frame, sent| {
        let mut buffer = layout
            .alloc()
            .with_policy::<BlockOn<GarbageCollect>>()
            .wait()
            .map_err(|e| format!("shared-memory alloc: {e:?}"))?;
        if copy {
            buffer.copy_from_slice(&source);
        }
        write_header(&mut buffer[..HEADER_BYTES], frame, sent);
        Ok(buffer.into())
    })
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let role = argv.get(1).cloned().unwrap_or_default();
    let outcome =
        RoleArgs::parse(argv.get(2..).unwrap_or_default()).and_then(|args| match role.as_str() {
            "produce" => produce(&args),
            "consume" => {
                let config = zenoh_roles::config(Some(&args.endpoint), None)?;
                zenoh_roles::consume(&args, config)
            }
            other => Err(format!("unknown role `{other}` (produce, consume)")),
        });
    if let Err(e) = outcome {
        eprintln!("zenoh-shm-peer {role}: {e}");
        std::process::exit(1);
    }
}
