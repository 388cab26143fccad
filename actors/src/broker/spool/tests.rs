use super::*;

fn message(n: u64) -> Message {
    Message {
        key: format!("cam{}", n % 2),
        id: format!("id-{n}"),
        payload: format!("{{\"n\":{n}}}").into_bytes(),
    }
}

fn messages(range: std::ops::Range<u64>) -> Vec<Message> {
    range.map(message).collect()
}

fn settings(dir: &Path, max_bytes: u64, when_full: WhenFull) -> SpoolSettings {
    SpoolSettings::new(dir.to_path_buf(), max_bytes, when_full)
}

fn open(dir: &Path) -> Spool {
    Spool::open(settings(dir, 1 << 30, WhenFull::Block)).unwrap()
}

fn read_all(spool: &Spool) -> Vec<Record> {
    let mut all = Vec::new();
    loop {
        let batch = spool.read(7, usize::MAX, Duration::ZERO).unwrap();
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

fn ids(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

#[test]
fn messages_come_back_in_order_with_their_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path());
    spool.append(&messages(0..20), |_| {}).unwrap();
    let records = read_all(&spool);
    assert_eq!(ids(&records), (0..20).collect::<Vec<_>>());
    assert_eq!(records[13].message, message(13));
    assert_eq!(spool.stats().pending, 20);
    spool.commit(20).unwrap();
    assert_eq!(spool.stats().pending, 0);
}

#[test]
fn unconfirmed_messages_survive_a_restart_and_confirmed_ones_do_not_come_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = open(dir.path());
        spool.append(&messages(0..10), |_| {}).unwrap();
        assert_eq!(read_all(&spool).len(), 10);
        spool.commit(4).unwrap();
        // Dropped without sync: a killed process leaves what it wrote in the kernel.
    }
    let spool = open(dir.path());
    assert_eq!(spool.stats().recovered, 6);
    spool.append(&messages(10..12), |_| {}).unwrap();
    let records = read_all(&spool);
    assert_eq!(ids(&records), (4..12).collect::<Vec<_>>());
    assert_eq!(records[0].message, message(4));
}

#[test]
fn a_second_process_cannot_open_the_same_spool() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let err = Spool::open(settings(dir.path(), 1 << 20, WhenFull::Block))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("in use by another process"), "{err}");
}

#[test]
fn a_torn_last_record_is_cut_off_and_the_rest_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = open(dir.path());
        spool.append(&messages(0..5), |_| {}).unwrap();
    }
    let segment = list_segments(dir.path()).unwrap()[0].path.clone();
    let len = std::fs::metadata(&segment).unwrap().len();
    // Half of the last record, as a process killed mid-write leaves it.
    let f = OpenOptions::new().write(true).open(&segment).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    let spool = open(dir.path());
    assert_eq!(ids(&read_all(&spool)), [0, 1, 2, 3]);
    spool.append(&messages(4..6), |_| {}).unwrap();
    assert_eq!(ids(&read_all(&spool)), [4, 5]);
    drop(spool);
    // And the repaired segment reads cleanly from the start.
    let spool = open(dir.path());
    assert_eq!(ids(&read_all(&spool)), [0, 1, 2, 3, 4, 5]);
}

#[test]
fn a_damaged_byte_in_the_last_segment_ends_it_there() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = open(dir.path());
        spool.append(&messages(0..5), |_| {}).unwrap();
    }
    let segment = list_segments(dir.path()).unwrap()[0].path.clone();
    let mut bytes = std::fs::read(&segment).unwrap();
    let third = bytes.len() / 2;
    bytes[third] ^= 0x55;
    std::fs::write(&segment, &bytes).unwrap();
    let spool = open(dir.path());
    let records = read_all(&spool);
    assert!(
        records.len() < 5 && !records.is_empty(),
        "{}",
        records.len()
    );
    assert_eq!(ids(&records), (0..records.len() as u64).collect::<Vec<_>>());
}

#[test]
fn segments_rotate_and_confirmed_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), 1 << 20, WhenFull::Block);
    s.segment_bytes = 200;
    let spool = Spool::open(s).unwrap();
    spool.append(&messages(0..50), |_| {}).unwrap();
    let before = list_segments(dir.path()).unwrap().len();
    assert!(before > 5, "{before}");
    assert_eq!(ids(&read_all(&spool)), (0..50).collect::<Vec<_>>());
    spool.commit(25).unwrap();
    let after = list_segments(dir.path()).unwrap();
    assert!(after.len() < before);
    assert!(after[0].first_seq <= 25);
    spool.commit(50).unwrap();
    assert!(list_segments(dir.path()).unwrap().len() <= 2);
    drop(spool);
    let spool = open(dir.path());
    assert_eq!(spool.stats().recovered, 0);
    assert!(read_all(&spool).is_empty());
}

#[test]
fn reading_resumes_across_segments_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), 1 << 20, WhenFull::Block);
    s.segment_bytes = 100;
    {
        let spool = Spool::open(s.clone()).unwrap();
        spool.append(&messages(0..30), |_| {}).unwrap();
        spool.commit(17).unwrap();
    }
    let spool = Spool::open(s).unwrap();
    assert_eq!(ids(&read_all(&spool)), (17..30).collect::<Vec<_>>());
}

#[test]
fn fail_policy_names_the_spool_and_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(settings(dir.path(), 300, WhenFull::Fail)).unwrap();
    let err = spool
        .append(&messages(0..100), |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is full") && err.contains("spool_max_mb"),
        "{err}"
    );
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
}

#[test]
fn drop_oldest_counts_what_it_loses_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), 400, WhenFull::DropOldest);
    s.segment_bytes = 100;
    let spool = Spool::open(s).unwrap();
    spool.append(&messages(0..100), |_| {}).unwrap();
    let stats = spool.stats();
    assert!(stats.bytes <= 400, "{stats:?}");
    assert!(stats.dropped > 0);
    let records = read_all(&spool);
    assert_eq!(records.last().unwrap().seq, 99);
    assert_eq!(stats.dropped + records.len() as u64, 100);
    // The survivors are the newest, in order.
    let seqs = ids(&records);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
}

#[test]
fn block_policy_waits_for_confirmations_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), 600, WhenFull::Block);
    s.segment_bytes = 150;
    let spool = std::sync::Arc::new(Spool::open(s).unwrap());
    let reader = {
        let spool = spool.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while seen.len() < 200 {
                let batch = spool
                    .read(10, usize::MAX, Duration::from_millis(50))
                    .unwrap();
                if let Some(last) = batch.last() {
                    spool.commit(last.seq + 1).unwrap();
                }
                seen.extend(batch.into_iter().map(|r| r.seq));
            }
            seen
        })
    };
    spool.append(&messages(0..200), |_| {}).unwrap();
    let seen = reader.join().unwrap();
    assert_eq!(seen, (0..200).collect::<Vec<_>>());
    assert_eq!(spool.stats().dropped, 0);
    assert!(spool.stats().bytes <= 600);
}

#[test]
fn garbage_in_the_directory_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cursor"), "not a number").unwrap();
    let err = Spool::open(settings(dir.path(), 1 << 20, WhenFull::Block))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cursor") && err.contains("not a number"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("00000000000000000000.seg"), [0xffu8; 64]).unwrap();
    let spool = Spool::open(settings(dir.path(), 1 << 20, WhenFull::Block)).unwrap();
    assert!(read_all(&spool).is_empty());
    spool.append(&messages(0..2), |_| {}).unwrap();
    assert_eq!(ids(&read_all(&spool)), [0, 1]);
}
