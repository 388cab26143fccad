//! Tests of the importer: the key-file parser and robustness here, the mappings in `mapping`
//! (sources to tracker) and `outputs` (sinks, analytics, brokers).

mod mapping;
mod outputs;

use std::path::Path;

use super::ini::KeyFile;
use super::onnx::{Dim, ModelInfo};
use super::*;
use crate::test_rng::XorShift;

// ---------------------------------------------------------------------------------------------
// The key-file parser

fn parse(text: &str) -> Result<KeyFile, ConfigError> {
    KeyFile::parse(Path::new("app.txt"), text.as_bytes())
}

#[test]
fn groups_keys_comments_and_whitespace() {
    let f = parse(
        "\u{feff}# leading comment\n\n[application]\nenable-perf-measurement = 1\r\n  # indented comment\n\
         [source0]\nuri=file://a b.mp4   \ntype=3\n",
    )
    .unwrap();
    assert_eq!(f.groups.len(), 2);
    let app = f.reader("application").unwrap();
    assert_eq!(app.int("enable-perf-measurement").unwrap(), Some(1));
    let s = f.reader("source0").unwrap();
    assert_eq!(s.string("uri").unwrap().as_deref(), Some("file://a b.mp4"));
    assert_eq!(f.group("source0").unwrap().get("type").unwrap().line, 8);
    assert_eq!(s.string("missing").unwrap(), None);
}

#[test]
fn lists_escapes_and_repeats() {
    let f = parse("[g]\nl=1;2;3;\nm=a\\;b;c\nn=\\sx\\ty\\\\\ne=\nk=1\nk=2\n[h]\nx=1\n[g]\ny=5\n")
        .unwrap();
    let g = f.reader("g").unwrap();
    assert_eq!(g.float_list("l").unwrap(), Some(vec![1.0, 2.0, 3.0]));
    assert_eq!(
        g.list("m").unwrap(),
        Some(vec!["a;b".to_string(), "c".to_string()])
    );
    assert_eq!(g.string("n").unwrap().as_deref(), Some(" x\ty\\"));
    assert_eq!(g.list("e").unwrap(), Some(vec![]));
    assert_eq!(g.int("k").unwrap(), Some(2), "the last value wins");
    assert_eq!(g.int("y").unwrap(), Some(5), "a repeated group is merged");
    assert_eq!(f.groups.len(), 2);
    assert_eq!(
        g.list("k").unwrap(),
        Some(vec!["2".to_string()]),
        "a single value is a one-item list"
    );
}

#[test]
fn booleans_take_glib_and_deepstream_spellings() {
    let f = parse("[g]\na=true\nb=0\nc=1\nd=yes\n").unwrap();
    let g = f.reader("g").unwrap();
    assert_eq!(g.bool("a").unwrap(), Some(true));
    assert_eq!(g.bool("b").unwrap(), Some(false));
    assert_eq!(g.bool("c").unwrap(), Some(true));
    let e = g.bool("d").unwrap_err().to_string();
    assert_eq!(
        e,
        "app.txt:5: [g] d: expected true, false, 1 or 0, got `yes`"
    );
}

#[test]
fn malformed_lines_are_errors_with_file_and_line() {
    let cases: &[(&str, &str)] = &[
        (
            "key=1\n[g]\n",
            "app.txt:1: key `key` comes before the first [group]",
        ),
        (
            "[g]\nx=1\njust words\n",
            "app.txt:3: `just words` is not a group",
        ),
        (
            "[g\nx=1\n",
            "app.txt:1: group header `[g` has no closing `]`",
        ),
        (
            "[g] trailing\n",
            "app.txt:1: unexpected `trailing` after the group header [g]",
        ),
        ("[]\n", "app.txt:1: empty group name"),
        ("[g]\n=5\n", "app.txt:2: a key=value line without a key"),
        ("[g]\na[b=1\n", "app.txt:2: `a[b` is not a valid key name"),
    ];
    for (text, want) in cases {
        let e = parse(text).unwrap_err().to_string();
        assert!(e.starts_with(want), "{text:?}: got `{e}`, want `{want}…`");
    }
}

#[test]
fn bad_values_name_file_line_group_and_key() {
    let f = parse("[streammux]\n\nbatch-size=4 # four\nw=x\ns=a\\qb\n").unwrap();
    let g = f.reader("streammux").unwrap();
    let e = g.int("batch-size").unwrap_err().to_string();
    assert_eq!(
        e,
        "app.txt:3: [streammux] batch-size: expected an integer, got `4 # four` (comments must be on their own line)"
    );
    let e = g.float_list("w").unwrap_err().to_string();
    assert!(
        e.starts_with("app.txt:4: [streammux] w: expected numbers"),
        "{e}"
    );
    let e = g.string("s").unwrap_err().to_string();
    assert_eq!(e, "app.txt:5: [streammux] s: unknown escape `\\q`");
}

#[test]
fn invalid_utf8_is_an_error_at_its_line() {
    let e = KeyFile::parse(Path::new("x.txt"), b"[g]\nok=1\nbad=\xff\xfe\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "x.txt:3: invalid UTF-8 at byte 5 of the line (key files are UTF-8 text)"
    );
}

#[test]
fn unused_keys_are_known() {
    let f = parse("[osd]\nenable=1\nborder-width=2\nfoo=bar\ngpu-id=0\n").unwrap();
    let r = f.reader("osd").unwrap();
    r.int("border-width").unwrap();
    r.touch("enable");
    let mut notes = Notes::default();
    notes.unused(&r, None);
    let lines: Vec<String> = notes.0.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        lines,
        [
            "[osd] gpu-id: ignored — NVIDIA GPU/DLA/memory settings; vidmesh runs on the CPU",
            "[osd] foo=bar: not mapped — vidmesh has no equivalent setting",
        ]
    );
}

/// Flips, inserts, deletes and duplicates bytes, and truncates.
fn mutate(input: &[u8], rng: &mut XorShift) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if at < out.len() => out[at] ^= 1 << rng.below(8),
            1 => out.insert(
                at,
                [b'[', b']', b'=', b';', b'\\', b'\n', b'#', 0xff, 0xc3, 0x00][rng.below(10)],
            ),
            2 if at < out.len() => {
                out.remove(at);
            }
            3 => out.truncate(at),
            4 if at < out.len() => {
                let end = (at + rng.below(40)).min(out.len());
                let chunk = out[at..end].to_vec();
                out.splice(at..at, chunk);
            }
            _ => out.insert(at.min(out.len()), rng.next() as u8),
        }
    }
    out
}

#[test]
fn mutated_key_files_never_panic() {
    let seed = std::fs::read_to_string(
        samples().join("source4_dec_infer_ssdlite_tracker_sgie_tiled_display.txt"),
    )
    .unwrap();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut errors = 0;
    for _ in 0..3000 {
        let bytes = mutate(seed.as_bytes(), &mut rng);
        match KeyFile::parse(Path::new("m.txt"), &bytes) {
            Ok(f) => {
                // Reading every value typed must not panic either.
                for g in &f.groups {
                    let r = GroupReader::new(&f, g);
                    for e in &g.entries {
                        let _ = r.int(&e.key);
                        let _ = r.float(&e.key);
                        let _ = r.bool(&e.key);
                        let _ = r.float_list(&e.key);
                        let _ = r.string(&e.key);
                    }
                }
            }
            Err(e) => {
                errors += 1;
                assert!(e.to_string().starts_with("m.txt:"), "{e}");
            }
        }
    }
    assert!(errors > 0, "mutations should break some files");
}

#[test]
fn mutated_configs_never_panic_the_import() {
    // Every file the import reads, mutated in turn, in a scratch copy of the samples.
    let files = [
        "test5_msgconv_kafka_nvdsanalytics.txt",
        "config_infer_primary_ssdlite.txt",
        "config_tracker_IOU.yml",
        "config_nvdsanalytics.txt",
        "msgconv_config.txt",
        "cfg_kafka.txt",
    ];
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tests/deepstream");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(samples()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    let app = copy.join(files[0]);
    let out = dir.path().join("t.toml");
    for round in 0..600 {
        let name = files[round % files.len()];
        let original = std::fs::read(samples().join(name)).unwrap();
        std::fs::write(copy.join(name), mutate(&original, &mut rng)).unwrap();
        if let Err(e) = import_deepstream(&app, Some(&out)) {
            assert!(!e.message.is_empty());
        }
        std::fs::write(copy.join(name), original).unwrap();
    }
    // The nvinferserver config (protobuf text) behind a plugin-type=1 gie.
    let app = copy.join("source1_file_dec_inferserver_ssdlite.txt");
    let name = "config_inferserver_primary_ssdlite.txt";
    let original = std::fs::read(samples().join(name)).unwrap();
    for _ in 0..400 {
        std::fs::write(copy.join(name), mutate(&original, &mut rng)).unwrap();
        if let Err(e) = import_deepstream(&app, Some(&out)) {
            assert!(!e.message.is_empty());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mappings, on configs written into a scratch directory

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("tests/deepstream")
}

const NVINFER: &str = "\
[property]
net-scale-factor=0.0078431372549
offsets=127.5;127.5;127.5
model-color-format=0
onnx-file=m.onnx
labelfile-path=labels.txt
infer-dims=3;300;300
network-input-order=1
batch-size=1
network-mode=0
gie-unique-id=1
network-type=0
cluster-mode=2
scaling-filter=1
output-blob-names=boxes;scores
parse-bbox-func-name=NvDsInferParseCustomTfSSD
custom-lib-path=libnvds_infercustomparser.so

[class-attrs-all]
pre-cluster-threshold=0.4
nms-iou-threshold=0.5
topk=20
";

/// A scratch directory with an nvinfer config, labels, a stand-in model and clip.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let s = Scratch {
            dir: tempfile::tempdir().unwrap(),
        };
        s.write("nvinfer.txt", NVINFER);
        s.write("labels.txt", "background\nperson\n");
        s.write("m.onnx", "existence is what validation checks");
        s.write("clip.avi", "x");
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) {
        let p = self.path(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Imports `app` (written as app.txt) to out.toml.
    fn import(&self, app: &str) -> Result<Converted, ConfigError> {
        self.write("app.txt", app);
        let out = self.path("out.toml");
        let imported = import_deepstream(&self.path("app.txt"), Some(&out))?;
        let table: toml::Table = toml::from_str(&imported.topology)
            .unwrap_or_else(|e| panic!("not TOML: {e}\n{}", imported.topology));
        Ok(Converted { imported, table })
    }

    /// Imports and validates with the topology loader (relative to the scratch directory).
    fn valid(&self, app: &str) -> (Converted, Topology) {
        let c = self.import(app).unwrap();
        for (path, text) in &c.imported.extra_files {
            std::fs::write(path, text).unwrap();
        }
        let t = Topology::parse(
            &self.path("out.toml"),
            &c.imported.topology,
            self.dir.path(),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", c.imported.topology));
        (c, t)
    }
}

#[derive(Debug)]
struct Converted {
    imported: Imported,
    table: toml::Table,
}

impl Converted {
    fn stage(&self, name: &str) -> &toml::Table {
        self.table["stage"][name]
            .as_table()
            .unwrap_or_else(|| panic!("no stage {name}:\n{}", self.imported.topology))
    }

    fn has_stage(&self, name: &str) -> bool {
        self.table.get("stage").and_then(|s| s.get(name)).is_some()
    }

    fn sources(&self) -> Vec<&toml::Table> {
        self.table["source"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_table().unwrap())
            .collect()
    }

    fn links(&self) -> Vec<(String, String)> {
        self.table["pipeline"]["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let l = l.as_array().unwrap();
                (
                    l[0].as_str().unwrap().to_string(),
                    l[1].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// The report line whose place starts with `place`.
    fn note(&self, place: &str) -> &Note {
        self.imported
            .notes
            .iter()
            .find(|n| n.place.starts_with(place))
            .unwrap_or_else(|| panic!("no note for {place}:\n{}", self.report()))
    }

    fn no_note(&self, place: &str) {
        assert!(
            !self
                .imported
                .notes
                .iter()
                .any(|n| n.place.starts_with(place)),
            "unexpected note for {place}:\n{}",
            self.report()
        );
    }

    fn report(&self) -> String {
        self.imported
            .notes
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

const MINIMAL: &str = "\
[source0]
enable=1
type=2
uri=file://clip.avi

[streammux]
batch-size=2
batched-push-timeout=40000

[primary-gie]
enable=1
config-file=nvinfer.txt

[osd]
enable=1
border-width=2
text-size=15

[sink0]
enable=1
type=3
container=1
codec=1
output-file=out.mp4
";
