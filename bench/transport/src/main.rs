//! `transport-bench`: how fast vidmesh moves 1080p frames and metadata between two processes,
//! against bare zenoh on the same machine in the same run. See bench/transport/README.md.
//!
//! With no role (or `run`), this is the parent: it re-invokes itself (and the separately built
//! `zenoh-shm-peer`) as the producer and consumer of every cell and prints the table.

mod common;
mod matrix;
mod peers;
mod vidmesh_roles;
mod zenoh_roles;

use bytes::Bytes;
use common::{source_frame, write_header, Payload, RoleArgs, HEADER_BYTES};
use vidmesh_roles::LinkKind;
use zenoh::bytes::ZBytes;

const USAGE: &str = "\
usage: transport-bench [run] [options]      run the benchmark, print the table
  --transports a,b,..   vidmesh-inproc, vidmesh-shm, vidmesh-shm-prefilled, vidmesh-tcp,
                        zenoh-shm, zenoh-shm-prefilled, zenoh-tcp, dora, dora-prefilled
                        (default: all; dora's are skipped when dora-peer or the dora
                        command line is not found: see bench/transport/README.md)
  --payloads a,b,..     rgb (1080p RGB, 6,220,800 B), nv12 (3,110,400 B), meta (256 B)
  --mode M              flat, paced or both (default both)
  --frames N            1080p frames measured flat out (default 600)
  --paced-frames N      messages measured when paced (default 300)
  --meta-messages N     metadata messages measured flat out (default 30000)
  --rate HZ             paced rate (default 100)
  --repeat N            run the whole matrix N times; the table shows medians (default 1)
  --window N            credits of the vidmesh process links (default 8)
  --slots N             frames the bare-zenoh shared-memory pool holds (default 8, as
                        vidmesh's slot pool)
  --json OUT            write every result, the machine and the load average to OUT
transport-bench copy-cost [--payload rgb] [--count 200]
                        µs to copy one frame into a vidmesh shared-memory slot, and
                        to encode, gather and decode it as a raw-mode delivery
roles (started by the parent): inproc, vidmesh-consume, vidmesh-shm-produce,
  vidmesh-tcp-produce, zenoh-consume, zenoh-produce";

fn zenoh_tcp_producer(args: &RoleArgs) -> Result<(), String> {
    let config = zenoh_roles::config(None, Some(&args.endpoint))?;
    let len = args.payload.bytes();
    // The pixels are shared by reference (no copy by the application), as vidmesh's source
    // `Bytes` are; only the header is new for each message.
    let rest = Bytes::from(source_frame(len)).slice(HEADER_BYTES..);
    zenoh_roles::produce(args, config, |frame, sent| {
        let mut header = vec![0u8; HEADER_BYTES];
        write_header(&mut header, frame, sent);
        let mut writer = ZBytes::writer();
        writer.append(ZBytes::from(header));
        writer.append(ZBytes::from(rest.clone()));
        Ok(writer.finish())
    })
}

fn copy_cost(args: &[String]) -> Result<(), String> {
    let mut payload = Payload::Rgb;
    let mut count = 200;
    let mut it = args.iter();
    while let Some(key) = it.next() {
        let value = it.next().ok_or_else(|| format!("`{key}` needs a value"))?;
        match key.as_str() {
            "--payload" => payload = Payload::parse(value)?,
            "--count" => count = value.parse().map_err(|e| format!("--count: {e}"))?,
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    let us = vidmesh_roles::slot_copy_cost(payload, count)?;
    println!(
        "{}: {us:.0} µs per frame into a shared-memory slot ({:.2} GB/s)",
        payload.name(),
        payload.bytes() as f64 / us / 1e3
    );
    let [encode, gather, decode] = vidmesh_roles::codec_cost(payload, count)?;
    println!(
        "{}: raw-mode delivery: encode {encode:.0} µs, gather into one buffer {gather:.0} µs, \
         decode {decode:.0} µs per frame",
        payload.name()
    );
    Ok(())
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let (role, rest) = match argv.get(1).map(String::as_str) {
        Some("-h" | "--help") => ("help".to_string(), &argv[2..]),
        Some(r) if !r.starts_with("--") => (r.to_string(), &argv[2..]),
        _ => ("run".to_string(), &argv[1..]),
    };
    let role_args = || RoleArgs::parse(rest);
    let outcome = match role.as_str() {
        "run" => matrix::Plan::parse(rest).and_then(|plan| {
            let ok = matrix::run(&plan, &argv.join(" "))?;
            if ok {
                Ok(())
            } else {
                Err("some cells failed (see the table)".into())
            }
        }),
        "help" => {
            println!("{USAGE}");
            Ok(())
        }
        "copy-cost" => copy_cost(rest),
        "inproc" => role_args().and_then(|a| vidmesh_roles::in_process(&a)),
        "vidmesh-consume" => role_args().and_then(|a| vidmesh_roles::consume(&a)),
        "vidmesh-shm-produce" => role_args().and_then(|a| {
            let kind = if a.variant == "prefilled" {
                LinkKind::ShmPrefilled
            } else {
                LinkKind::Shm
            };
            vidmesh_roles::produce(&a, kind)
        }),
        "vidmesh-tcp-produce" => {
            role_args().and_then(|a| vidmesh_roles::produce(&a, LinkKind::Raw))
        }
        "zenoh-consume" => role_args().and_then(|a| {
            let config = zenoh_roles::config(Some(&a.endpoint), None)?;
            zenoh_roles::consume(&a, config)
        }),
        "zenoh-produce" => role_args().and_then(|a| zenoh_tcp_producer(&a)),
        other => Err(format!("unknown role `{other}`\n{USAGE}")),
    };
    if let Err(e) = outcome {
        eprintln!("transport-bench {role}: {e}");
        std::process::exit(1);
    }
}
