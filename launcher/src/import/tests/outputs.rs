//! The pipeline's ends: sinks, reported groups, nvdsanalytics, brokers and msgconv, the samples.

use super::*;

#[test]
fn sinks_of_every_type() {
    let s = Scratch::new();
    let sinks = "[sink1]\nenable=1\ntype=1\n[sink2]\nenable=1\ntype=2\nsync=1\n\
                 [sink3]\nenable=1\ntype=4\nrtsp-port=8554\n[sink4]\nenable=1\ntype=3\ncontainer=2\ncodec=2\n\
                 output-file=rec.mkv\nbitrate=3000000\niframeinterval=25\nsync=1\n[sink5]\nenable=0\ntype=4\n\
                 [sink6]\nenable=1\ntype=9\n";
    let (c, _) = s.valid(&format!("{MINIMAL}{sinks}"));
    assert_eq!(
        c.note("[sink1] type=1 (fakesink)").verdict,
        Verdict::NotMapped
    );
    assert!(c
        .note("[sink2] type=2 (EGL display)")
        .why
        .contains("file sink"));
    let rtsp = c.stage("sink3");
    assert_eq!(rtsp["uri"].as_str(), Some("rtsp://0.0.0.0:8554/ds-test"));
    c.no_note("[sink3]");
    c.no_note("[sink5]");
    c.note("[sink6] type=9 (unknown type)");
    let file = c.stage("sink4");
    assert_eq!(file["uri"].as_str(), Some("file://rec.mkv"));
    assert_eq!(file["codec"].as_str(), Some("h265"));
    assert_eq!(file["bitrate_kbps"].as_integer(), Some(3000));
    assert_eq!(file["key_int_max"].as_integer(), Some(25));
    assert_eq!(file["sync"].as_bool(), Some(true));
    c.no_note("[sink4]");
    for sink in ["sink1", "sink2", "sink5", "sink6"] {
        assert!(!c.has_stage(sink), "{sink}");
    }
    assert!(c.links().contains(&("osd".into(), "sink3".into())));
    assert!(c.links().contains(&("osd".into(), "sink4".into())));

    // A container the extension contradicts, MPEG-4: said so.
    let sinks = "[sink1]\nenable=1\ntype=3\ncontainer=1\ncodec=3\noutput-file=rec.mkv\n";
    let c = s.import(&format!("{MINIMAL}{sinks}")).unwrap();
    assert_eq!(c.stage("sink1")["uri"].as_str(), Some("file://rec.mp4"));
    c.note("[sink1] container=1 output-file=rec.mkv");
    c.note("[sink1] codec=3 (MPEG-4)");
}

#[test]
fn several_sources_write_one_file_each_without_a_tiler() {
    let s = Scratch::new();
    let app = MINIMAL.replace(
        "type=2\nuri=file://clip.avi",
        "type=3\nuri=file://clip.avi\nnum-sources=2",
    ) + "[tiled-display]\nenable=0\nrows=1\ncolumns=2\n";
    let (c, _) = s.valid(&app);
    assert!(!c.has_stage("tile"));
    assert_eq!(
        c.stage("sink0")["uri"].as_str(),
        Some("file://out_{source}.mp4")
    );
    c.note("[sink0] output-file=out.mp4");
    c.no_note("[tiled-display]");
}

#[test]
fn a_tiled_display_becomes_a_tile_stage_before_the_osd() {
    let s = Scratch::new();
    let app = MINIMAL.replace(
        "type=2\nuri=file://clip.avi",
        "type=3\nuri=file://clip.avi\nnum-sources=3",
    )
        + "[tiled-display]\nenable=1\nrows=1\ncolumns=2\nwidth=1281\nheight=720\ngpu-id=0\n\
         [sink1]\nenable=1\ntype=4\nrtsp-port=8600\n";
    let (c, _) = s.valid(&app);
    let tile = c.stage("tile");
    assert_eq!(tile["kind"].as_str(), Some("tile"));
    assert_eq!(tile["rows"].as_integer(), Some(1));
    assert_eq!(tile["columns"].as_integer(), Some(2));
    assert_eq!(tile["width"].as_integer(), Some(1280), "even");
    assert_eq!(tile["height"].as_integer(), Some(720));
    let links = c.links();
    for (a, b) in [
        ("detect", "tile"),
        ("tile", "osd"),
        ("osd", "sink0"),
        ("osd", "sink1"),
    ] {
        assert!(
            links.contains(&(a.into(), b.into())),
            "{a} -> {b}: {links:?}"
        );
    }
    assert_eq!(
        c.stage("sink0")["uri"].as_str(),
        Some("file://out.mp4"),
        "one tiled stream, one file"
    );
    c.no_note("[sink0] output-file");
    c.no_note("[sink1]");
    assert_eq!(
        c.note("[tiled-display] rows columns").verdict,
        Verdict::Approximate,
        "2 cells for 3 sources"
    );
    assert_eq!(c.note("[tiled-display] gpu-id").verdict, Verdict::Ignored);
}

#[test]
fn secondary_gies_and_unknown_groups_are_reported() {
    let s = Scratch::new();
    s.write(
        "sgie.txt",
        "[property]\nnetwork-type=1\noperate-on-gie-id=1\noperate-on-class-ids=1;2\n",
    );
    let app = format!(
        "{MINIMAL}[secondary-gie0]\nenable=1\nconfig-file=sgie.txt\n[secondary-gie1]\nenable=0\nconfig-file=absent.txt\n\
         [ds-example]\nenable=1\nprocessing-width=640\n[message-consumer0]\nenable=1\nproto-lib=x.so\n\
         [application]\nenable-perf-measurement=1\nperf-measurement-interval-sec=2\ngie-kitti-output-dir=kitti\n\
         [tests]\nfile-loop=1\n"
    );
    let c = s.import(&app).unwrap();
    assert_eq!(
        c.note("[secondary-gie0]").to_string(),
        "[secondary-gie0] sgie.txt onnx-file: not mapped — vidmesh runs ONNX models (onnx-file) \
         with ONNX Runtime; this gie is left out of the topology"
    );
    c.no_note("[secondary-gie1]");
    c.note("[ds-example]");
    c.note("[message-consumer0]");
    assert!(c
        .note("[application] enable-perf-measurement=1")
        .why
        .contains("--progress 2s"));
    c.note("[application] gie-kitti-output-dir=kitti");
    c.no_note("[tests] file-loop=1");
    assert!(c
        .sources()
        .iter()
        .all(|s| s["loop"].as_bool() == Some(true)));
    let e = s
        .import(&format!(
            "{MINIMAL}[secondary-gie0]\nenable=1\nconfig-file=absent.txt\n"
        ))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[secondary-gie0] config-file=absent.txt: cannot read"),
        "{e}"
    );
}

const ANALYTICS: &str = "\
[property]
enable=1
config-width=768
config-height=576
osd-mode=2
display-font-size=12

[roi-filtering-stream-0]
enable=1
roi-A=10;10;100;10;100;100
inverse-roi=1
class-id=-1

[overcrowding-stream-0]
enable=1
roi-A=10;10;100;10;100;100
roi-B=200;200;300;200;300;300
object-threshold=2
class-id=-1

[line-crossing-stream-0]
enable=1
line-crossing-Exit=10;50;60;50;40;20;40;90
class-id=0
extended=1
mode=strict

[direction-detection-stream-0]
enable=1
direction-North=0;100;0;0
class-id=-1

[roi-filtering-stream-3]
enable=1
roi-X=1;1;5;1;5;5
";

#[test]
fn nvdsanalytics_rules_become_stream_entries() {
    let s = Scratch::new();
    s.write("analytics.txt", ANALYTICS);
    let app = format!(
        "{MINIMAL}[tracker]\nenable=1\nll-lib-file=libnvds_mot_iou.so\n[nvds-analytics]\nenable=1\nconfig-file=analytics.txt\n\
         [sink9]\nenable=1\ntype=6\nmsg-conv-payload-type=1\nmsg-broker-proto-lib=libnvds_mqtt_proto.so\nmsg-broker-conn-str=mq;1883\ntopic=t\n"
    );
    let (c, t) = s.valid(&app);
    let a = c.stage("analytics");
    let streams = a["stream"].as_array().unwrap();
    assert_eq!(streams.len(), 1);
    let st = streams[0].as_table().unwrap();
    assert_eq!(st["source"].as_str(), Some("source0"));
    assert_eq!(st["frame_size"].as_array().unwrap().len(), 2);
    let rois = st["roi"].as_array().unwrap();
    assert_eq!(rois.len(), 2, "{}", c.imported.topology);
    let a_roi = rois[0].as_table().unwrap();
    assert_eq!(a_roi["name"].as_str(), Some("A"));
    assert_eq!(a_roi["inverse"].as_bool(), Some(true));
    assert_eq!(
        a_roi["max_objects"].as_integer(),
        Some(2),
        "same name and points: merged"
    );
    assert_eq!(
        a_roi["points"].to_string(),
        "[[10, 10], [100, 10], [100, 100]]"
    );
    let line = st["line"].as_array().unwrap()[0].as_table().unwrap();
    assert_eq!(line["name"].as_str(), Some("Exit"));
    assert_eq!(line["points"].to_string(), "[[40, 20], [40, 90]]");
    assert_eq!(line["direction"].to_string(), "[[10, 50], [60, 50]]");
    let dir = st["direction"].as_array().unwrap()[0].as_table().unwrap();
    assert_eq!(dir["name"].as_str(), Some("North"));
    c.note("analytics.txt [property] config-width=768 config-height=576");
    c.note("analytics.txt [line-crossing-stream-0] class-id=0");
    c.note("analytics.txt [line-crossing-stream-0] extended=1");
    c.note("analytics.txt [line-crossing-stream-0] mode=strict");
    c.note("analytics.txt [roi-filtering-stream-3]");
    c.note("analytics.txt [property] display-font-size=12");
    let links = c.links();
    for link in [
        ("track", "analytics"),
        ("analytics", "osd"),
        ("analytics", "sink9"),
    ] {
        assert!(
            links.contains(&(link.0.into(), link.1.into())),
            "{link:?} in {links:?}"
        );
    }
    assert!(t.stages.iter().any(|s| s.name == "analytics"));
    let e = {
        s.write(
            "analytics.txt",
            &ANALYTICS.replace("roi-B=200;200;300;200;300;300", "roi-B=1;2;3"),
        );
        s.import(&app).unwrap_err().to_string()
    };
    assert!(e.ends_with("analytics.txt:17: [overcrowding-stream-0] roi-B: expected at least 3 x;y pairs, got 3 numbers"), "{e}");
}

#[test]
fn brokers_of_every_protocol() {
    let s = Scratch::new();
    s.write("msgconv.txt", "[sensor0]\nenable=1\ntype=Camera\nid=CAM-A\nlocation=1;2;3\ndescription=Gate\n\
                            [place0]\nenable=1\nid=7\nname=lot\ntype=parking\nlocation=4;5;6\ncoordinate=1;1;1\nplace-sub-field1=P1\nplace-sub-field2=north\nplace-sub-field3=L2\n\
                            [analytics0]\nenable=1\nid=m\nversion=2.0\n[sensor5]\nenable=1\nid=nobody\n");
    s.write("cfg_kafka.txt", "[message-broker]\nproto-cfg = \"message.timeout.ms=2500;retries=5\"\npartition-key = sensor.id\n");
    s.write("cfg_amqp.txt", "[message-broker]\npassword = secret\nexchange = amq.direct\ntopic = events\namqp-framesize = 131072\n");
    s.write("cfg_mqtt.txt", "[message-broker]\nusername = u\npassword = p\nclient-id = cam-1\nenable-tls = 1\nkeep-alive = 30\n");
    s.write(
        "cfg_redis.txt",
        "[message-broker]\nstreamsize = 5000\npayloadkey = metadata\n",
    );
    let sinks = "\
[sink1]\nenable=1\ntype=6\nmsg-conv-config=msgconv.txt\nmsg-conv-payload-type=0\nmsg-conv-frame-interval=30\n\
msg-broker-proto-lib=/opt/nvidia/deepstream/deepstream/lib/libnvds_kafka_proto.so\nmsg-broker-conn-str=kafka-1;9092;people\n\
msg-broker-config=cfg_kafka.txt\nmsg-conv-comp-id=1\n\
[sink2]\nenable=1\ntype=6\nmsg-conv-payload-type=1\nmsg-broker-proto-lib=libnvds_amqp_proto.so\nmsg-broker-conn-str=rabbit;5672;guest\nmsg-broker-config=cfg_amqp.txt\n\
[sink3]\nenable=1\ntype=6\nmsg-conv-payload-type=1\nmsg-broker-proto-lib=libnvds_mqtt_proto.so\nmsg-broker-conn-str=mq;8883\ntopic=cams/events\nmsg-broker-config=cfg_mqtt.txt\n\
[sink4]\nenable=1\ntype=6\nmsg-conv-payload-type=2\nmsg-broker-proto-lib=libnvds_redis_proto.so\nmsg-broker-conn-str=cache;6379\ntopic=events\nmsg-broker-config=cfg_redis.txt\n\
[sink5]\nenable=1\ntype=6\nmsg-conv-payload-type=1\nmsg-broker-proto-lib=libnvds_azure_proto.so\nmsg-broker-conn-str=HostName=hub.azure-devices.net;DeviceId=cam;SharedAccessKey=a2V5\n\
[sink6]\nenable=1\ntype=6\nmsg-broker-proto-lib=libnvds_azure_edge_proto.so\n\
[sink7]\nenable=1\ntype=6\nmsg-broker-proto-lib=libnvds_kafka_proto.so\nmsg-broker-conn-str=kafka-1;9092\n";
    let (c, t) = s.valid(&format!("{MINIMAL}{sinks}"));
    let kafka = c.stage("sink1");
    assert_eq!(kafka["kind"].as_str(), Some("broker"));
    assert_eq!(kafka["uri"].as_str(), Some("kafka://kafka-1:9092/people"));
    assert_eq!(kafka["schema"].as_str(), Some("full"));
    assert_eq!(kafka["frame_interval"].as_integer(), Some(30));
    assert_eq!(kafka["timeout"].as_str(), Some("2500ms"));
    assert_eq!(kafka["options"]["retries"].as_str(), Some("5"));
    let msgconv = s.path("out.msgconv.toml");
    assert_eq!(kafka["config"].as_str(), Some(msgconv.to_str().unwrap()));
    let (path, text) = &c.imported.extra_files[0];
    assert_eq!(path, &msgconv);
    let converted: toml::Table = toml::from_str(text).unwrap();
    let sensor = converted["sensor"][0].as_table().unwrap();
    assert_eq!(sensor["id"].as_str(), Some("CAM-A"));
    assert_eq!(sensor["location"].to_string(), "[1.0, 2.0, 3.0]");
    let place = converted["place"][0].as_table().unwrap();
    assert_eq!(place["aisle"]["id"].as_str(), Some("P1"));
    assert_eq!(place["aisle"]["level"].as_str(), Some("L2"));
    assert_eq!(converted["analytics"][0]["version"].as_str(), Some("2.0"));
    c.note("msgconv.txt [sensor5]");
    c.note("msgconv.txt [place0] place-sub-field1..3");
    c.note("cfg_kafka.txt [message-broker] partition-key=sensor.id");
    c.note("[sink1] msg-conv-comp-id=1");
    c.note("[sink1] msg-conv-payload-type=0 (full schema)");

    let amqp = c.stage("sink2");
    assert_eq!(
        amqp["uri"].as_str(),
        Some("amqp://guest:secret@rabbit:5672/?frame_max=131072")
    );
    assert_eq!(amqp["schema"].as_str(), Some("minimal"));
    assert_eq!(amqp["options"]["exchange"].as_str(), Some("amq.direct"));
    assert_eq!(amqp["options"]["routing_key"].as_str(), Some("events"));

    let mqtt = c.stage("sink3");
    assert_eq!(mqtt["uri"].as_str(), Some("mqtts://mq:8883/cams/events"));
    assert_eq!(mqtt["options"]["client_id"].as_str(), Some("cam-1"));
    assert_eq!(mqtt["options"]["keep_alive"].as_str(), Some("30s"));

    let redis = c.stage("sink4");
    assert_eq!(redis["uri"].as_str(), Some("redis://cache:6379/events"));
    assert_eq!(redis["format"].as_str(), Some("protobuf"));
    assert_eq!(redis["options"]["maxlen"].as_integer(), Some(5000));
    c.note("[sink4] msg-conv-payload-type=2 (Protobuf)");
    c.note("cfg_redis.txt [message-broker] payloadkey=metadata");

    let azure = c.stage("sink5");
    assert_eq!(azure["uri"].as_str(), Some("azure-iot://"));
    assert!(azure["options"]["connection_string"]
        .as_str()
        .unwrap()
        .contains("DeviceId=cam"));

    assert_eq!(
        c.note("[sink6] type=6 msg-broker-proto-lib=libnvds_azure_edge_proto.so")
            .verdict,
        Verdict::NotMapped
    );
    assert!(c
        .note("[sink7] type=6 msg-broker-conn-str=kafka-1;9092")
        .why
        .contains("topic"));
    assert!(!c.has_stage("sink6") && !c.has_stage("sink7"));
    for b in ["sink1", "sink2", "sink3", "sink4", "sink5"] {
        assert!(c.links().contains(&("detect".into(), b.into())), "{b}");
        assert!(t.stages.iter().any(|s| s.name == b));
    }
}

#[test]
fn a_separate_message_converter_feeds_a_broker_only_sink() {
    let s = Scratch::new();
    let app = format!(
        "{MINIMAL}[message-converter]\nenable=1\nmsg-conv-payload-type=1\nmsg-conv-frame-interval=5\n\
         [sink1]\nenable=1\ntype=6\ndisable-msgconv=1\nmsg-broker-proto-lib=libnvds_redis_proto.so\nmsg-broker-conn-str=r;6379\ntopic=x\n"
    );
    let (c, _) = s.valid(&app);
    let b = c.stage("sink1");
    assert_eq!(b["schema"].as_str(), Some("minimal"));
    assert_eq!(b["frame_interval"].as_integer(), Some(5));
    c.no_note("[message-converter]");

    let unused = format!("{MINIMAL}[message-converter]\nenable=1\nmsg-conv-payload-type=1\n");
    let c = s.import(&unused).unwrap();
    assert!(c
        .note("[message-converter]")
        .why
        .contains("disable-msgconv=1"));
}

#[test]
fn the_msgconv_config_needs_an_output_file() {
    let s = Scratch::new();
    s.write("msgconv.txt", "[sensor0]\nenable=1\nid=A\n");
    let app = format!(
        "{MINIMAL}[sink1]\nenable=1\ntype=6\nmsg-conv-config=msgconv.txt\nmsg-broker-proto-lib=libnvds_kafka_proto.so\nmsg-broker-conn-str=k;9092;t\n"
    );
    s.write("app.txt", &app);
    let imported = import_deepstream(&s.path("app.txt"), None).unwrap();
    assert!(imported.extra_files.is_empty());
    let note = imported
        .notes
        .iter()
        .find(|n| n.place == "[sink1] msg-conv-config=msgconv.txt")
        .unwrap();
    assert!(note.why.contains("-o FILE"), "{note}");
}

#[test]
fn report_lines_are_also_in_the_topology_header() {
    let s = Scratch::new();
    let c = s
        .import(&format!("{MINIMAL}[sink1]\nenable=1\ntype=1\n"))
        .unwrap();
    assert!(c.imported.topology.contains(
        "#   [sink1] type=1 (fakesink): not mapped — a fakesink only discards frames; vidmesh \
         needs no stage for that"
    ));
}

#[test]
fn the_sample_configs_convert() {
    // The files under tests/deepstream, converted in place; the model and clip they point at
    // only matter for validation, which launcher/tests/import_deepstream.rs covers.
    for (name, stages) in [
        (
            "source1_file_dec_infer_ssdlite.txt",
            &["mux", "preprocess", "detect", "osd", "sink0"][..],
        ),
        (
            "source4_dec_infer_ssdlite_tracker_sgie_tiled_display.txt",
            &[
                "mux",
                "preprocess",
                "detect",
                "track",
                "sgie0",
                "sgie1",
                "tile",
                "osd",
                "sink1",
                "sink2",
            ][..],
        ),
        (
            "test5_msgconv_kafka_nvdsanalytics.txt",
            &[
                "mux",
                "preprocess",
                "detect",
                "track",
                "analytics",
                "osd",
                "sink0",
                "sink1",
            ][..],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let imported =
            import_deepstream(&samples().join(name), Some(&dir.path().join("t.toml"))).unwrap();
        let table: toml::Table = toml::from_str(&imported.topology).unwrap();
        let names: Vec<&String> = table["stage"].as_table().unwrap().keys().collect();
        let mut want: Vec<&str> = stages.to_vec();
        want.sort();
        assert_eq!(names, want, "{name}");
    }
}
