//! The pipeline's front: sources, the mux, the detector (nvinfer), the tracker.

use super::*;

#[test]
fn a_minimal_config_converts_into_the_deepstream_graph() {
    let s = Scratch::new();
    let (c, t) = s.valid(MINIMAL);
    let sources = c.sources();
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0]["id"].as_str(), Some("source0"));
    let uri = sources[0]["uri"].as_str().unwrap();
    assert_eq!(
        uri,
        format!(
            "file://{}",
            s.path("clip.avi").canonicalize().unwrap().display()
        ),
        "relative file URIs start at the config's directory, written absolute"
    );
    assert_eq!(
        c.links(),
        [
            ("sources", "mux"),
            ("mux", "preprocess"),
            ("preprocess", "detect"),
            ("detect", "osd"),
            ("osd", "sink0"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let mux = c.stage("mux");
    assert_eq!(mux["batch_size"].as_integer(), Some(2));
    assert_eq!(mux["batch_timeout"].as_str(), Some("40ms"));
    let osd = c.stage("osd");
    assert_eq!(osd["border_width"].as_integer(), Some(2));
    assert_eq!(osd["font_size"].as_float(), Some(15.0));
    let sink = c.stage("sink0");
    assert_eq!(sink["kind"].as_str(), Some("sink"));
    assert_eq!(
        sink["uri"].as_str(),
        Some("file://out.mp4"),
        "outputs stay relative to the working directory, as in deepstream-app"
    );
    assert_eq!(t.stages.len(), 5);
    assert!(c
        .imported
        .topology
        .starts_with("# Converted by `vidmesh import-deepstream`"));
    assert!(c
        .imported
        .topology
        .contains(&s.path("app.txt").display().to_string()));
    assert!(c.imported.notes.is_empty(), "{}", c.report());
}

#[test]
fn nvinfer_settings_map_to_preprocess_and_infer() {
    let s = Scratch::new();
    let (c, _) = s.valid(MINIMAL);
    let pre = c.stage("preprocess");
    assert_eq!(pre["kind"].as_str(), Some("preprocess"));
    assert_eq!(pre["width"].as_integer(), Some(300));
    assert_eq!(pre["height"].as_integer(), Some(300));
    assert_eq!(pre["layout"].as_str(), Some("nhwc"));
    assert_eq!(pre["color_order"].as_str(), Some("rgb"));
    assert_eq!(pre["interpolation"].as_str(), Some("bilinear"));
    assert_eq!(pre["net_scale_factor"].as_float(), Some(0.0078431372549));
    assert_eq!(
        pre["offsets"].as_array().unwrap(),
        &vec![toml::Value::Float(127.5); 3]
    );
    let infer = c.stage("detect");
    assert_eq!(
        infer["model"].as_str(),
        Some(s.path("m.onnx").to_str().unwrap())
    );
    assert_eq!(
        infer["labels_file"].as_str(),
        Some(s.path("labels.txt").to_str().unwrap())
    );
    assert_eq!(infer["component_id"].as_integer(), Some(1));
    assert_eq!(infer["score_threshold"].as_float(), Some(0.4));
    assert_eq!(infer["nms_iou"].as_float(), Some(0.5));
    assert_eq!(infer["top_k"].as_integer(), Some(20));
    let parser = infer["parser"].as_table().unwrap();
    assert_eq!(parser["type"].as_str(), Some("ssd"));
    assert_eq!(parser["boxes_output"].as_str(), Some("boxes"));
    assert_eq!(parser["scores_output"].as_str(), Some("scores"));
    assert_eq!(parser["box_format"].as_str(), Some("yxyx"));
    assert_eq!(parser["normalized"].as_bool(), Some(true));
    assert_eq!(parser["background_class"].as_integer(), Some(0));
}

#[test]
fn nvinfer_differences_are_reported() {
    let s = Scratch::new();
    s.write(
        "nvinfer.txt",
        &(NVINFER
            .replace("network-mode=0", "network-mode=2\ninterval=2")
            .replace("cluster-mode=2", "cluster-mode=1")
            .replace("scaling-filter=1", "scaling-filter=3")
            .replace("model-color-format=0", "model-color-format=1")
            .replace(
                "NvDsInferParseCustomTfSSD\ncustom-lib-path=libnvds_infercustomparser.so",
                "NvDsInferParseYolo\ncustom-lib-path=/x/libnvdsinfer_custom_impl_Yolo.so\nfoo-key=1",
            )
            + "\n[class-attrs-0]\npre-cluster-threshold=0.3\n"),
    );
    let c = s.import(MINIMAL).unwrap();
    assert_eq!(c.stage("preprocess")["color_order"].as_str(), Some("bgr"));
    assert_eq!(
        c.note("[primary-gie] nvinfer.txt network-mode=2").verdict,
        Verdict::Approximate
    );
    assert_eq!(c.stage("detect")["interval"].as_integer(), Some(2));
    assert_eq!(
        c.note("[primary-gie] interval=2").verdict,
        Verdict::Approximate,
        "no tracker carries objects over the skipped frames"
    );
    assert_eq!(
        c.note("[primary-gie] nvinfer.txt cluster-mode=1 (DBSCAN)")
            .verdict,
        Verdict::Approximate
    );
    c.note("[primary-gie] nvinfer.txt scaling-filter=3");
    let parser = c.note("[primary-gie] nvinfer.txt parse-bbox-func-name=NvDsInferParseYolo");
    assert_eq!(parser.verdict, Verdict::NotMapped);
    assert!(
        parser.place.contains("libnvdsinfer_custom_impl_Yolo.so")
            && parser.why.contains("cannot load custom parser libraries"),
        "{parser}"
    );
    assert_eq!(
        c.stage("detect")["class_attrs"]["0"]["score_threshold"].as_float(),
        Some(0.3)
    );
    c.no_note("nvinfer.txt [class-attrs-0]");
    assert_eq!(
        c.note("nvinfer.txt [property] foo-key=1").to_string(),
        "nvinfer.txt [property] foo-key=1: not mapped — vidmesh has no equivalent setting"
    );
    let parser = c.stage("detect")["parser"].as_table().unwrap();
    assert_eq!(parser["box_format"].as_str(), Some("xyxy"));
    assert_eq!(
        parser["background_class"].as_integer(),
        Some(0),
        "the labels file starts with background"
    );
}

#[test]
fn the_group_overrides_the_nvinfer_file() {
    let s = Scratch::new();
    s.write("other_labels.txt", "person\n");
    let c = s
        .import(&MINIMAL.replace(
            "config-file=nvinfer.txt",
            "config-file=nvinfer.txt\ngie-unique-id=7\nlabelfile-path=other_labels.txt",
        ))
        .unwrap();
    let infer = c.stage("detect");
    assert_eq!(infer["component_id"].as_integer(), Some(7));
    assert_eq!(
        infer["labels_file"].as_str(),
        Some(s.path("other_labels.txt").to_str().unwrap())
    );
}

#[test]
fn an_engine_only_config_uses_the_onnx_model_beside_it() {
    let s = Scratch::new();
    s.write(
        "nvinfer.txt",
        &NVINFER.replace(
            "onnx-file=m.onnx",
            "model-engine-file=m.onnx_b4_gpu0_fp16.engine",
        ),
    );
    let c = s.import(MINIMAL).unwrap();
    assert_eq!(
        c.stage("detect")["model"].as_str(),
        Some(s.path("m.onnx").to_str().unwrap())
    );
    c.note("[primary-gie] nvinfer.txt model-engine-file");

    s.write(
        "nvinfer.txt",
        &NVINFER.replace(
            "onnx-file=m.onnx",
            "model-engine-file=resnet10.caffemodel_b4_gpu0_int8.engine",
        ),
    );
    let c = s.import(MINIMAL).unwrap();
    assert!(!c.has_stage("detect") && !c.has_stage("preprocess"));
    assert_eq!(
        c.note("[primary-gie] nvinfer.txt model-engine-file")
            .verdict,
        Verdict::NotMapped
    );
    assert!(c.links().contains(&("mux".into(), "osd".into())));
}

#[test]
fn input_size_and_layout_come_from_the_model_when_the_config_has_none() {
    // A hand-made ONNX graph: input `image` [1, 320, 240, 3] (NHWC), an initializer listed as
    // an input too (older exporters do that), outputs `boxes` [1, 10, 4] and `scores` [1, 10, 2].
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn field(number: u64, body: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }
    fn value_info(name: &str, dims: &[i64]) -> Vec<u8> {
        let mut shape = Vec::new();
        for d in dims {
            let mut dim = Vec::new();
            if *d >= 0 {
                varint(1 << 3, &mut dim);
                varint(*d as u64, &mut dim);
            } else {
                field(2, b"batch", &mut dim);
            }
            field(1, &dim, &mut shape);
        }
        let mut tensor = Vec::new();
        varint(1 << 3, &mut tensor);
        varint(1, &mut tensor);
        field(2, &shape, &mut tensor);
        let mut ty = Vec::new();
        field(1, &tensor, &mut ty);
        let mut vi = Vec::new();
        field(1, name.as_bytes(), &mut vi);
        field(2, &ty, &mut vi);
        vi
    }
    let mut graph = Vec::new();
    let mut init = Vec::new();
    field(8, b"weights", &mut init);
    field(5, &init, &mut graph);
    field(11, &value_info("weights", &[16]), &mut graph);
    field(11, &value_info("image", &[-1, 320, 240, 3]), &mut graph);
    field(12, &value_info("scores", &[-1, 10, 2]), &mut graph);
    field(12, &value_info("boxes", &[-1, 10, 4]), &mut graph);
    let mut model = Vec::new();
    varint(1 << 3, &mut model);
    varint(8, &mut model);
    field(7, &graph, &mut model);

    let info = ModelInfo::parse(&model).unwrap();
    assert_eq!(info.inputs.len(), 1);
    assert_eq!(info.inputs[0].name, "image");
    assert_eq!(info.inputs[0].shape[0], Dim::Dynamic);
    assert_eq!(
        info.outputs[1].shape,
        vec![Dim::Dynamic, Dim::Fixed(10), Dim::Fixed(4)]
    );
    for cut in 0..model.len() {
        let _ = ModelInfo::parse(&model[..cut]);
    }

    let s = Scratch::new();
    std::fs::write(s.path("m.onnx"), &model).unwrap();
    s.write(
        "nvinfer.txt",
        &NVINFER
            .replace("infer-dims=3;300;300\nnetwork-input-order=1\n", "")
            .replace("output-blob-names=boxes;scores\n", ""),
    );
    let c = s.import(MINIMAL).unwrap();
    let pre = c.stage("preprocess");
    assert_eq!(
        (pre["width"].as_integer(), pre["height"].as_integer()),
        (Some(240), Some(320))
    );
    assert_eq!(pre["layout"].as_str(), Some("nhwc"));
    c.note("[primary-gie] nvinfer.txt network-input-order");
    let parser = c.stage("detect")["parser"].as_table().unwrap();
    assert_eq!(parser["boxes_output"].as_str(), Some("boxes"));
    assert_eq!(parser["scores_output"].as_str(), Some("scores"));
}

#[test]
fn missing_or_broken_nvinfer_configs_are_errors() {
    let s = Scratch::new();
    let e = s
        .import(&MINIMAL.replace("config-file=nvinfer.txt", "config-file=nope.txt"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "{}:12: [primary-gie] config-file=nope.txt: cannot read ",
            s.path("app.txt").display()
        )) && e.contains("nope.txt"),
        "{e}"
    );
    let e = s
        .import(&MINIMAL.replace("config-file=nvinfer.txt\n", ""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[primary-gie] has no config-file"), "{e}");
    s.write(
        "nvinfer.txt",
        "[property]\nonnx-file=m.onnx\ninfer-dims=3;x;300\n",
    );
    let e = s.import(MINIMAL).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:3: [property] infer-dims: expected integers separated by `;`, got `x`",
            s.path("nvinfer.txt").display()
        )
    );
    s.write("nvinfer.txt", "[other]\nx=1\n");
    let e = s.import(MINIMAL).unwrap_err().to_string();
    assert!(
        e.ends_with(
            "nvinfer.txt: no [property] group (an nvinfer config keeps its settings there)"
        ),
        "{e}"
    );
    let e = import_deepstream(&s.path("absent.txt"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.txt: cannot read"), "{e}");
}

#[test]
fn a_classifier_as_primary_classifies_whole_frames() {
    let s = Scratch::new();
    s.write(
        "nvinfer.txt",
        &NVINFER.replace("network-type=0", "network-type=1\nclassifier-threshold=0.6"),
    );
    let (c, _) = s.valid(MINIMAL);
    let detect = c.stage("detect");
    assert_eq!(detect["parser"]["type"].as_str(), Some("classifier"));
    assert_eq!(detect["parser"]["output"].as_str(), Some("boxes"));
    assert_eq!(detect["score_threshold"].as_float(), Some(0.6));
    assert!(!detect.contains_key("operate_on"));
    c.note("[primary-gie] nvinfer.txt output-blob-names=boxes;scores");
    assert_eq!(
        c.note("nvinfer.txt [class-attrs-all]").verdict,
        Verdict::NotMapped,
        "detector thresholds mean nothing to a classifier"
    );
}

const SGIE: &str = "\
[property]
net-scale-factor=0.00392156862745
model-color-format=1
onnx-file=bag.onnx
labelfile-path=bag_labels.txt
infer-dims=3;128;64
network-type=1
process-mode=2
gie-unique-id=2
operate-on-gie-id=1
operate-on-class-ids=1;2
classifier-async-mode=1
classifier-threshold=0.51
input-object-min-width=32
input-object-min-height=64
input-object-max-width=640
secondary-reinfer-interval=10
output-blob-names=predictions
";

#[test]
fn secondary_gies_run_on_the_objects_of_the_gie_they_name() {
    let s = Scratch::new();
    s.write("sgie.txt", SGIE);
    s.write("bag_labels.txt", "no_bag;backpack\n");
    s.write("bag.onnx", "stand-in");
    s.write(
        "faces.txt",
        &NVINFER
            .replace("gie-unique-id=1", "gie-unique-id=4\noperate-on-gie-id=1")
            .replace("[class-attrs-all]", "[class-attrs-all]\ndetected-min-w=8"),
    );
    s.write(
        "orphan.txt",
        &SGIE.replace("operate-on-gie-id=1", "operate-on-gie-id=9"),
    );
    let app = format!(
        "{MINIMAL}\n[tracker]\nenable=1\nll-lib-file=libnvds_nvmultiobjecttracker.so\n\
         [secondary-gie1]\nenable=1\nconfig-file=faces.txt\n\
         [secondary-gie0]\nenable=1\nconfig-file=sgie.txt\nbatch-size=16\n\
         [secondary-gie2]\nenable=1\nconfig-file=orphan.txt\n\
         [secondary-gie3]\nenable=0\nconfig-file=absent.txt\n"
    );
    let (c, t) = s.valid(&app);
    assert_eq!(
        c.links(),
        [
            ("sources", "mux"),
            ("mux", "preprocess"),
            ("preprocess", "detect"),
            ("detect", "track"),
            ("track", "sgie0"),
            ("sgie0", "sgie1"),
            ("sgie1", "osd"),
            ("osd", "sink0"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string())),
        "secondary gies follow the tracker in group order"
    );
    assert_eq!(t.stages.len(), 8);

    let bag = c.stage("sgie0");
    assert_eq!(bag["kind"].as_str(), Some("infer"));
    assert_eq!(bag["operate_on"].as_str(), Some("detect"));
    assert_eq!(bag["component_id"].as_integer(), Some(2));
    let classes: Vec<i64> = bag["operate_on_classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_integer().unwrap())
        .collect();
    assert_eq!(classes, [1, 2]);
    assert_eq!(
        bag["min_object_size"].as_array().unwrap(),
        &vec![toml::Value::Float(32.0), toml::Value::Float(64.0)]
    );
    assert_eq!(bag["reinfer_interval"].as_integer(), Some(10));
    assert_eq!(bag["score_threshold"].as_float(), Some(0.51));
    assert_eq!(
        bag["labels_file"].as_str(),
        Some(s.path("bag_labels.txt").to_str().unwrap())
    );
    assert_eq!(bag["parser"]["type"].as_str(), Some("classifier"));
    assert_eq!(bag["parser"]["output"].as_str(), Some("predictions"));
    let pre = bag["preprocess"].as_table().unwrap();
    assert!(!pre.contains_key("kind"));
    assert_eq!(pre["width"].as_integer(), Some(64));
    assert_eq!(pre["height"].as_integer(), Some(128));
    assert_eq!(pre["layout"].as_str(), Some("nchw"));
    assert_eq!(pre["color_order"].as_str(), Some("bgr"));
    assert_eq!(pre["net_scale_factor"].as_float(), Some(0.00392156862745));
    assert!(!bag.contains_key("interval"));
    assert_eq!(
        c.note("[secondary-gie0] sgie.txt classifier-async-mode=1")
            .verdict,
        Verdict::Approximate
    );
    assert_eq!(
        c.note("[secondary-gie0] sgie.txt input-object-max-width=640")
            .verdict,
        Verdict::NotMapped
    );
    c.no_note("[secondary-gie0] batch-size");

    // A secondary detector: the ssd parser, thresholds, and its own preprocessing.
    let faces = c.stage("sgie1");
    assert_eq!(faces["operate_on"].as_str(), Some("detect"));
    assert_eq!(faces["component_id"].as_integer(), Some(4));
    assert_eq!(faces["parser"]["type"].as_str(), Some("ssd"));
    assert_eq!(faces["score_threshold"].as_float(), Some(0.4));
    assert_eq!(
        faces["min_size"].as_array().unwrap(),
        &vec![toml::Value::Float(8.0), toml::Value::Float(0.0)]
    );
    assert_eq!(faces["preprocess"]["layout"].as_str(), Some("nhwc"));

    // operate-on-gie-id naming no converted gie: left out, said so.
    assert!(!c.has_stage("sgie2"));
    assert_eq!(
        c.note("[secondary-gie2] orphan.txt operate-on-gie-id=9")
            .verdict,
        Verdict::NotMapped
    );
    assert!(!c.has_stage("sgie3"), "a disabled gie is skipped");
}

#[test]
fn per_class_attributes_and_filters_map_to_the_infer_stage() {
    let s = Scratch::new();
    s.write(
        "nvinfer.txt",
        &(NVINFER
            .replace("topk=20", "topk=20\ndetected-min-w=4\nroi-top-offset=50")
            .replace("cluster-mode=2", "cluster-mode=2\nfilter-out-class-ids=0;3")
            + "\n[class-attrs-2]\npre-cluster-threshold=0.7\nnms-iou-threshold=0.3\n\
               detected-max-w=200\ndetected-max-h=300\nroi-bottom-offset=20\neps=0.2\n\
               [class-attrs-x]\nthreshold=0.1\n"),
    );
    let (c, _) = s.valid(MINIMAL);
    let d = c.stage("detect");
    assert_eq!(
        d["min_size"].as_array().unwrap(),
        &vec![toml::Value::Float(4.0), toml::Value::Float(0.0)]
    );
    assert_eq!(d["roi"]["top"].as_float(), Some(50.0));
    let two = d["class_attrs"]["2"].as_table().unwrap();
    assert_eq!(two["score_threshold"].as_float(), Some(0.7));
    assert_eq!(two["nms_iou"].as_float(), Some(0.3));
    assert_eq!(
        two["max_size"].as_array().unwrap(),
        &vec![toml::Value::Float(200.0), toml::Value::Float(300.0)]
    );
    assert_eq!(two["roi"]["bottom"].as_float(), Some(20.0));
    let filtered: Vec<i64> = d["filter_out_classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_integer().unwrap())
        .collect();
    assert_eq!(filtered, [0, 3]);
    assert_eq!(
        c.note("nvinfer.txt [class-attrs-2] eps=0.2").verdict,
        Verdict::NotMapped
    );
    assert_eq!(
        c.note("nvinfer.txt [class-attrs-x]").verdict,
        Verdict::NotMapped
    );
}

#[test]
fn sources_of_every_type() {
    let s = Scratch::new();
    let c = s
        .import(
            "[source0]\nenable=1\ntype=3\nuri=file://clip.avi\nnum-sources=3\ndrop-frame-interval=2\ncamera-id=5\n\
             [source1]\nenable=1\ntype=4\nuri=rtsp://user:pw@cam/1\nlatency=150\nselect-rtp-protocol=4\nrtsp-reconnect-interval-sec=10\n\
             [source2]\nenable=1\ntype=1\ncamera-width=640\n\
             [source3]\nenable=1\ntype=2\nuri=http://host/x.mp4\n\
             [source4]\nenable=0\ntype=2\nuri=file://nothing.mp4\n\
             [source5]\ntype=2\nuri=file://not-enabled.mp4\n\
             [source6]\nenable=1\ntype=2\nuri=file:///abs/dir/with%20space.mp4\n",
        )
        .unwrap();
    let sources = c.sources();
    let ids: Vec<&str> = sources.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["source0", "source1", "source2", "source3", "source4"]);
    assert_eq!(sources[1]["uri"], sources[0]["uri"]);
    assert_eq!(sources[3]["uri"].as_str(), Some("rtsp://user:pw@cam/1"));
    assert_eq!(sources[3]["latency"].as_str(), Some("150ms"));
    assert_eq!(sources[3]["rtsp_transport"].as_str(), Some("tcp"));
    assert_eq!(
        sources[4]["uri"].as_str(),
        Some("file:///abs/dir/with space.mp4")
    );
    assert_eq!(
        c.stage("mux")["batch_size"].as_integer(),
        Some(5),
        "one per source without [streammux]"
    );
    assert_eq!(
        c.note("[source0] drop-frame-interval=2").verdict,
        Verdict::NotMapped
    );
    assert_eq!(
        c.note("[source0] camera-id=5").verdict,
        Verdict::Approximate
    );
    assert_eq!(
        c.note("[source1] rtsp-reconnect-interval-sec=10").verdict,
        Verdict::Approximate
    );
    assert_eq!(sources[3]["reconnect_interval"].as_str(), Some("10s"));
    assert!(c
        .note("[source0] drop-frame-interval=2")
        .why
        .contains("max_fps"));
    assert_eq!(
        c.note("[source2] type=1 (V4L2 camera)").to_string(),
        "[source2] type=1 (V4L2 camera): not mapped — vidmesh reads files (file://) and RTSP streams (rtsp://) only; no cameras"
    );
    let http = c.note("[source3] uri=http://host/x.mp4");
    assert!(http.why.contains("not http://"), "{http}");
    c.no_note("[source4]");
    c.no_note("[source5]");
    assert!(!c.report().contains(":pw@"), "{}", c.report());
}

#[test]
fn a_source_list_names_its_streams() {
    let s = Scratch::new();
    let c = s
        .import(
            "[source-list]\nnum-source-bins=2\nlist=file://clip.avi;rtsp://cam/2;\nsensor-name-list=lobby;door\n\
             [source-attr-all]\nenable=1\ntype=3\nlatency=100\n",
        )
        .unwrap();
    let sources = c.sources();
    assert_eq!(sources[0]["id"].as_str(), Some("lobby"));
    assert_eq!(sources[1]["id"].as_str(), Some("door"));
    assert_eq!(sources[1]["latency"].as_str(), Some("100ms"));
    assert!(sources[0].get("latency").is_none());
}

#[test]
fn streammux_timeouts_and_sizes() {
    let s = Scratch::new();
    let c = s
        .import(&MINIMAL.replace(
            "batched-push-timeout=40000",
            "batched-push-timeout=33333\nwidth=1920\nheight=1080\nenable-padding=1\nlive-source=1\ngpu-id=0\nnvbuf-memory-type=0",
        ))
        .unwrap();
    assert_eq!(c.stage("mux")["batch_timeout"].as_str(), Some("33333us"));
    c.note("[streammux] width=1920 height=1080");
    c.note("[streammux] enable-padding=1");
    c.note("[streammux] live-source=1");
    assert_eq!(
        c.note("[streammux] gpu-id, nvbuf-memory-type").verdict,
        Verdict::Ignored
    );
    let e = s
        .import(&MINIMAL.replace("batch-size=2", "batch-size=0"))
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("app.txt:7: [streammux] batch-size must be 1..=1024, got 0"),
        "{e}"
    );
}

const NVDCF_YML: &str = "%YAML:1.0
BaseConfig:
  minDetectorConfidence: 0.2   # comment
TargetManagement:
  probationAge: 4
  maxShadowTrackingAge: 30
  maxTargetsPerStream: 150
VisualTracker:
  visualTrackerType: 1
  useColorNames: 1
";

#[test]
fn trackers_follow_their_library_and_config() {
    let s = Scratch::new();
    s.write("tracker_NvDCF.yml", NVDCF_YML);
    let tracker = "[tracker]\nenable=1\ntracker-width=640\ntracker-height=384\n\
                   ll-lib-file=/opt/nvidia/deepstream/deepstream/lib/libnvds_nvmultiobjecttracker.so\n\
                   ll-config-file=tracker_NvDCF.yml\nenable-past-frame=1\ndisplay-tracking-id=0\ngpu-id=0\n";
    let (c, _) = s.valid(&format!("{MINIMAL}{tracker}"));
    let t = c.stage("track");
    assert_eq!(t["algorithm"].as_str(), Some("bytetrack"));
    assert_eq!(t["max_age"].as_integer(), Some(30));
    assert_eq!(t["min_hits"].as_integer(), Some(4));
    assert_eq!(t["low_threshold"].as_float(), Some(0.2));
    assert_eq!(t["past_frame_output"].as_bool(), Some(true));
    assert_eq!(c.stage("osd")["show_track_id"].as_bool(), Some(false));
    assert!(c.links().contains(&("detect".into(), "track".into())));
    assert!(c.links().contains(&("track".into(), "osd".into())));
    let n = c.note("[tracker] libnvds_nvmultiobjecttracker.so + tracker_NvDCF.yml (NvDCF)");
    assert!(n.why.contains("bytetrack"), "{n}");
    let n = c.note("[tracker] tracker_NvDCF.yml");
    assert!(
        n.why.contains("TargetManagement (1), VisualTracker (2)"),
        "{n}"
    );
    c.note("[tracker] tracker-width=640 tracker-height=384");

    // The config's contents decide; names only when contents say nothing.
    let cases = [
        (
            "StateEstimator:\n  stateEstimatorType: 1\n",
            "x.yml",
            "sort",
        ),
        ("StateEstimator:\n  stateEstimatorType: 0\n", "x.yml", "iou"),
        (
            "ReID:\n  reidType: 2\n  reidHistorySize: 50\n",
            "x.yml",
            "appearance",
        ),
        (
            "TargetManagement:\n  probationAge: 1\n",
            "config_tracker_NvSORT.yml",
            "sort",
        ),
        (
            "TargetManagement:\n  probationAge: 1\n",
            "config_tracker_IOU.yml",
            "iou",
        ),
        (
            "TargetManagement:\n  probationAge: 1\n",
            "config_tracker_NvDeepSORT.yml",
            "appearance",
        ),
    ];
    for (yml, name, want) in cases {
        s.write(name, yml);
        let c = s
            .import(&format!(
                "{MINIMAL}[tracker]\nenable=1\nll-lib-file=libnvds_nvmultiobjecttracker.so\nll-config-file={name}\n"
            ))
            .unwrap();
        assert_eq!(
            c.stage("track")["algorithm"].as_str(),
            Some(want),
            "{name}: {yml}"
        );
        if want == "appearance" && yml.contains("reidHistorySize") {
            assert_eq!(c.stage("track")["gallery_size"].as_integer(), Some(50));
        }
    }
    let c = s
        .import(&format!(
            "{MINIMAL}[tracker]\nenable=1\nll-lib-file=libnvds_mot_iou.so\n"
        ))
        .unwrap();
    assert_eq!(c.stage("track")["algorithm"].as_str(), Some("iou"));
    let e = s
        .import(&format!(
            "{MINIMAL}[tracker]\nenable=1\nll-lib-file=x.so\nll-config-file=missing.yml\n"
        ))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[tracker] ll-config-file=missing.yml: cannot read"),
        "{e}"
    );
    s.write("bad.yml", "Section:\n  key value\n");
    let e = s
        .import(&format!(
            "{MINIMAL}[tracker]\nenable=1\nll-config-file=bad.yml\n"
        ))
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("bad.yml:2: `key value` is not a `key: value` line"),
        "{e}"
    );
}

const INFERSERVER: &str = r#"
infer_config {
  unique_id: 5
  gpu_ids: [0]
  max_batch_size: 4
  backend {
    outputs: [ { name: "detection_boxes" }, { name: "detection_scores" } ]
    triton {
      model_name: "people"
      version: 3
      grpc { url: "triton.internal:8001" enable_cuda_buffer_sharing: true }
    }
  }
  preprocess {
    network_format: IMAGE_FORMAT_BGR
    tensor_order: TENSOR_ORDER_LINEAR
    maintain_aspect_ratio: 1
    symmetric_padding: 1
    frame_scaling_filter: 1
    normalize { scale_factor: 0.5 channel_offsets: [1, 2, 3] }
  }
  postprocess {
    labelfile_path: "labels.txt"
    detection {
      num_detected_classes: 2
      custom_parse_bbox_func: "NvDsInferParseCustomTfSSD"
      per_class_params { key: 1 value { pre_threshold: 0.6 } }
      nms { confidence_threshold: 0.3 iou_threshold: 0.4 topk: 50 }
    }
  }
  lstm { loops: 1 }
}
input_control { process_mode: PROCESS_MODE_FULL_FRAME interval: 1 }
output_control {
  detect_control { default_filter { bbox_filter { min_width: 16 min_height: 24 } } }
}
"#;

#[test]
fn an_nvinferserver_gie_on_grpc_becomes_a_triton_infer_stage() {
    let s = Scratch::new();
    s.write("server.txt", INFERSERVER);
    let app = MINIMAL.replace(
        "config-file=nvinfer.txt",
        "plugin-type=1\nconfig-file=server.txt",
    );
    let (c, t) = s.valid(&app);
    assert!(!c.has_stage("preprocess"), "the stage preprocesses itself");
    assert!(c.links().contains(&("mux".into(), "detect".into())));
    assert_eq!(t.stages.len(), 4);
    let d = c.stage("detect");
    assert_eq!(d["backend"].as_str(), Some("triton"));
    assert_eq!(d["server"].as_str(), Some("grpc://triton.internal:8001"));
    assert_eq!(d["model"].as_str(), Some("people"));
    assert_eq!(d["model_version"].as_str(), Some("3"));
    assert_eq!(d["component_id"].as_integer(), Some(5));
    assert_eq!(d["interval"].as_integer(), Some(1));
    assert_eq!(d["score_threshold"].as_float(), Some(0.3));
    assert_eq!(d["nms_iou"].as_float(), Some(0.4));
    assert_eq!(d["top_k"].as_integer(), Some(50));
    assert_eq!(
        d["class_attrs"]["1"]["score_threshold"].as_float(),
        Some(0.6)
    );
    assert_eq!(
        d["min_size"].as_array().unwrap(),
        &vec![toml::Value::Float(16.0), toml::Value::Float(24.0)]
    );
    let pre = d["preprocess"].as_table().unwrap();
    assert!(!pre.contains_key("width"), "the size comes from the model");
    assert_eq!(pre["color_order"].as_str(), Some("bgr"));
    assert_eq!(pre["layout"].as_str(), Some("nchw"));
    assert_eq!(pre["maintain_aspect_ratio"].as_bool(), Some(true));
    assert_eq!(pre["symmetric_padding"].as_bool(), Some(true));
    assert_eq!(pre["interpolation"].as_str(), Some("bilinear"));
    assert_eq!(pre["net_scale_factor"].as_float(), Some(0.5));
    let parser = d["parser"].as_table().unwrap();
    assert_eq!(parser["type"].as_str(), Some("ssd"));
    assert_eq!(parser["boxes_output"].as_str(), Some("detection_boxes"));
    assert_eq!(parser["scores_output"].as_str(), Some("detection_scores"));
    assert_eq!(parser["box_format"].as_str(), Some("yxyx"));
    assert_eq!(
        d["labels_file"].as_str(),
        Some(s.path("labels.txt").to_str().unwrap())
    );
    assert_eq!(
        c.note("server.txt infer_config.gpu_ids").verdict,
        Verdict::Ignored
    );
    let lstm = c.note("server.txt:31 infer_config.lstm");
    assert_eq!(lstm.verdict, Verdict::NotMapped);
    assert_eq!(
        c.note("[primary-gie] interval=1").verdict,
        Verdict::Approximate,
        "no tracker"
    );
}

#[test]
fn an_nvinferserver_model_repository_runs_its_onnx_model_and_secondaries_classify() {
    let s = Scratch::new();
    s.write("repo/people/1/model.onnx", "older");
    s.write("repo/people/2/model.onnx", "newest");
    s.write("repo/people/config.pbtxt", "name: \"people\"");
    let local = INFERSERVER.replace("version: 3", "version: -1").replace(
        "grpc { url: \"triton.internal:8001\" enable_cuda_buffer_sharing: true }",
        "model_repo { root: \"./repo\" strict_model_config: true }",
    );
    s.write("server.txt", &local);
    s.write("colour_labels.txt", "dark;light\n");
    s.write(
        "colour.txt",
        r#"infer_config {
  unique_id: 7
  backend {
    outputs: [ { name: "predictions" } ]
    triton { model_name: "colour" grpc { url: "localhost:8001" } }
  }
  preprocess { network_format: IMAGE_FORMAT_RGB normalize { scale_factor: 0.00392 } }
  postprocess { labelfile_path: "colour_labels.txt" classification { threshold: 0.51 } }
}
input_control {
  process_mode: PROCESS_MODE_CLIP_OBJECTS
  operate_on_gie_id: 5
  operate_on_class_ids: [1]
  secondary_reinfer_interval: 15
  async_mode: true
  object_control { bbox_filter { min_width: 32 min_height: 64 } }
}
"#,
    );
    let app = MINIMAL.replace(
        "config-file=nvinfer.txt",
        "plugin-type=1\nconfig-file=server.txt",
    ) + "\n[secondary-gie0]\nenable=1\nplugin-type=1\nconfig-file=colour.txt\n";
    let (c, _) = s.valid(&app);
    let d = c.stage("detect");
    assert!(!d.contains_key("backend"), "ONNX Runtime in the stage");
    assert_eq!(
        d["model"].as_str(),
        Some(s.path("repo/people/2/model.onnx").to_str().unwrap()),
        "version -1: the newest"
    );
    assert_eq!(
        c.note("[primary-gie] server.txt infer_config.backend.triton.model_repo")
            .verdict,
        Verdict::Approximate
    );
    let colour = c.stage("sgie0");
    assert_eq!(colour["operate_on"].as_str(), Some("detect"));
    assert_eq!(colour["backend"].as_str(), Some("triton"));
    assert_eq!(colour["component_id"].as_integer(), Some(7));
    assert_eq!(colour["reinfer_interval"].as_integer(), Some(15));
    assert_eq!(colour["score_threshold"].as_float(), Some(0.51));
    assert_eq!(colour["parser"]["type"].as_str(), Some("classifier"));
    assert_eq!(colour["parser"]["output"].as_str(), Some("predictions"));
    assert_eq!(
        colour["min_object_size"].as_array().unwrap(),
        &vec![toml::Value::Float(32.0), toml::Value::Float(64.0)]
    );
    c.note("[secondary-gie0] colour.txt input_control.async_mode");

    // No ONNX model in the repository: left out, said so.
    std::fs::remove_dir_all(s.path("repo/people/1")).unwrap();
    std::fs::remove_dir_all(s.path("repo/people/2")).unwrap();
    let c = s.import(&app).unwrap();
    assert!(!c.has_stage("detect") && !c.has_stage("sgie0"));
    assert_eq!(
        c.note("[primary-gie] server.txt infer_config.backend.triton.model_repo")
            .verdict,
        Verdict::NotMapped
    );
}
