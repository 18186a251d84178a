//! The store under crashes: a child process registers versions, printing
//! `ack <id>` only after each commit returns, and is killed (SIGKILL) at
//! seeded random moments. After each kill the file must open, pass
//! SQLite's integrity check, hold every acknowledged version, and its audit
//! chain must verify. Bounded: a fixed number of rounds, each under a
//! deadline.

use backstop::store::sqlite::SqliteStore;
use backstop::store::{audit, AuditFilter, Store};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn no_acknowledged_write_is_lost_when_the_writer_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("backstop.db");
    let mut acked: Vec<String> = Vec::new();
    let mut next = 0u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..6 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Kill after 5..45 acknowledgements this round.
        let kill_after = 5 + (seed % 40) as usize;
        let mut child = Command::new(env!("CARGO_BIN_EXE_backstop"))
            .args(["store-writer", "--db"])
            .arg(&db)
            .args(["--start", &next.to_string(), "--count", "100000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut lines = BufReader::new(stdout).lines();
        let mut this_round = 0;
        while this_round < kill_after && Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(id) = line.strip_prefix("ack ") {
                acked.push(id.to_string());
                this_round += 1;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Anything acknowledged before the kill reached us through the pipe.
        for line in lines.map_while(Result::ok) {
            if let Some(id) = line.strip_prefix("ack ") {
                acked.push(id.to_string());
            }
        }
        assert!(
            this_round > 0,
            "round {round}: the writer acknowledged nothing"
        );

        let store = SqliteStore::open(&db).unwrap();
        assert_eq!(store.integrity_check().unwrap(), "ok", "round {round}");
        let stored: std::collections::BTreeSet<String> = store
            .versions("torture")
            .unwrap()
            .into_iter()
            .map(|v| v.id)
            .collect();
        for id in &acked {
            assert!(
                stored.contains(id),
                "round {round}: acknowledged {id} was lost"
            );
        }
        let entries = store.audit(&AuditFilter::default()).unwrap();
        assert_eq!(
            audit::verify(&entries),
            Ok(stored.len() as u64),
            "round {round}"
        );
        // Unacknowledged writes may or may not have landed; continue after
        // whatever did.
        next = stored.len() as u64;
    }
}

#[test]
fn injected_write_failures_change_nothing_and_say_so() {
    use backstop::store::faulty::FaultyStore;
    use backstop::store::{AuditDraft, StoreError, VersionRecord};
    let dir = tempfile::tempdir().unwrap();
    let version = |id: &str| VersionRecord {
        model: "m".into(),
        id: id.into(),
        digest: "sha256:00".into(),
        signature: serde_json::json!({}),
        metadata: Default::default(),
        provenance: Default::default(),
        upstreams: vec![],
        registered_at_ms: 0,
        registered_by: "t".into(),
        deprecated: false,
        profile: None,
    };
    let draft = || AuditDraft {
        actor: "t".into(),
        action: "version.register".into(),
        target: "m".into(),
        ..Default::default()
    };
    // A one-off fault on the third write.
    let store = FaultyStore::new(
        SqliteStore::open(&dir.path().join("a.db")).unwrap(),
        2,
        false,
    );
    let results: Vec<_> = (0..5)
        .map(|i| store.register_version(&version(&format!("v{i}")), draft()))
        .collect();
    assert!(results[2]
        .as_ref()
        .is_err_and(|e| matches!(e, StoreError::Unavailable(m) if m.contains("injected"))));
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 4);
    assert_eq!(store.inner().versions("m").unwrap().len(), 4);
    assert_eq!(
        audit::verify(&store.inner().audit(&AuditFilter::default()).unwrap()),
        Ok(4)
    );

    // A persistent fault: everything after the first write fails.
    let store = FaultyStore::new(
        SqliteStore::open(&dir.path().join("b.db")).unwrap(),
        1,
        true,
    );
    let ok = (0..5)
        .filter(|i| {
            store
                .register_version(&version(&format!("v{i}")), draft())
                .is_ok()
        })
        .count();
    assert_eq!(ok, 1);
    assert_eq!(store.inner().versions("m").unwrap().len(), 1);
}
