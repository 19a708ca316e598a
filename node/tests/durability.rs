//! What a node does with damaged or missing data and with a disk that fails under it, on
//! real `linkrift` processes: it refuses to start on data it cannot trust, saying how to
//! recover; and when its disk fills up, it fail-stops (not ready, with the reason; exit
//! status 74) without losing an acknowledged write, and recovers by itself once space is
//! back.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::cluster::{admin_status, member, trio, Root};
use support::{Node, ADMIN_KEY};

/// Runs `linkrift serve` on `dir` with `flags` (loopback addresses the OS picks, unless
/// given) and the test's keys, until it exits by itself (within 60 s); its status and
/// standard error.
fn serve_until_exit(dir: &Path, flags: &[&str]) -> (std::process::ExitStatus, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_linkrift"));
    command.args(["serve", "--data-dir"]).arg(dir).args(flags);
    for flag in ["--http", "--peer", "--cluster"] {
        if !flags.contains(&flag) {
            command.args([flag, "127.0.0.1:0"]);
        }
    }
    let mut child = command
        .env("LINKRIFT_ADMIN_KEY", ADMIN_KEY)
        .env("LINKRIFT_CLUSTER_SECRET", support::cluster::SECRET)
        .env("LINKRIFT_NODE_PLAINTEXT", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("linkrift starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("linkrift still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

#[test]
fn a_data_directory_with_data_but_no_identity_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("raft.sled")).unwrap();
    std::fs::write(dir.path().join("raft.sled").join("db"), b"someone's log").unwrap();
    let (status, stderr) = serve_until_exit(dir.path(), &[]);
    assert!(!status.success(), "it started: {stderr}");
    assert!(
        stderr.contains("holds data (raft.sled) but no linkrift.json")
            && stderr.contains("join the cluster as a new node"),
        "{stderr}"
    );
    // Nothing was written into it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["raft.sled"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_snapshot_body_is_found_before_the_state_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--shard-count", "1", "--snapshot-after-entries", "100"];
    let node = Node::start_with(dir.path(), &[("LINKRIFT_ADMIN_KEY", ADMIN_KEY)], &flags);
    node.wait_ready().await;
    for i in 0..150 {
        let (status, body) = node
            .create(
                ADMIN_KEY,
                json!({"url": format!("https://example.com/{i}"), "code": format!("snap{i}")}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // Shard 0 is group 1: wait for its snapshot, which covers at least 100 of the links.
    let snap = dir.path().join("groups/g1/current.snap");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !snap.exists() {
        assert!(
            Instant::now() < deadline,
            "no snapshot of shard 0 was taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(node.terminate().success());

    let mut bytes = std::fs::read(&snap).unwrap();
    let at = bytes.len() - 8;
    bytes[at] ^= 0x20;
    std::fs::write(&snap, &bytes).unwrap();
    let (status, stderr) = serve_until_exit(dir.path(), &flags);
    assert!(
        !status.success(),
        "it started on a damaged snapshot: {stderr}"
    );
    assert!(
        stderr.contains("is damaged")
            && stderr.contains("checksum does not match")
            && stderr.contains("rejoin the cluster as a new node"),
        "{stderr}"
    );
}

/// A tmpfs of `mib` MiB mounted at a new directory under `parent`, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

/// `command` run as root: directly when this is root, else through `sudo -n`.
fn as_root(command: &[&str]) -> std::process::Output {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let mut c = if root {
        Command::new(command[0])
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", command[0]]);
        c
    };
    c.args(&command[1..]).output().expect("the command runs")
}

impl Tmpfs {
    fn mount(parent: &Path, mib: u64) -> Tmpfs {
        let path = parent.join("disk");
        std::fs::create_dir(&path).unwrap();
        let size = format!("size={mib}m");
        let out = as_root(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &size,
            "tmpfs",
            path.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (or sudo without a password): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        as_root(&["umount", "-l", self.path.to_str().unwrap()]);
    }
}

/// Fills the filesystem of `dir` with one file; its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 1 << 20];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    // The last pages a partial write left: fill them byte by byte.
    while file.write(&[0u8]).is_ok_and(|n| n == 1) {}
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fail_stops_the_node_and_it_recovers_once_space_is_back() {
    let root = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(root.path(), 96);
    let data = disk.path.join("data");
    let flags = ["--shard-count", "4"];
    let env = [("LINKRIFT_ADMIN_KEY", ADMIN_KEY)];
    let mut node = Node::start_with(&data, &env, &flags);
    node.wait_ready().await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let code = format!("before{i}");
        let (status, body) = node
            .create(
                ADMIN_KEY,
                json!({"url": format!("https://example.com/{code}"), "code": code}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        acknowledged.push(code);
    }

    let filler = fill(&disk.path);
    let filled = Instant::now();
    // Writes go on until the node meets the full disk; every one acknowledged must survive.
    let mut refused = None;
    for i in 0.. {
        let code = format!("during{i}");
        let answer = node
            .http
            .post(node.url("/v1/links"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"url": format!("https://example.com/{code}"), "code": code}))
            .send()
            .await;
        match answer.map(|r| r.status().as_u16()) {
            Ok(201) => acknowledged.push(code),
            Ok(status) => {
                refused = Some(status);
                break;
            }
            Err(e) => panic!("the node did not answer a write: {e}"),
        }
        assert!(
            filled.elapsed() < Duration::from_secs(30),
            "the node still acknowledged writes 30 s after its disk filled up ({i} of them)"
        );
    }
    assert_eq!(refused, Some(503), "a write on a node whose disk failed");
    // Not ready, with the reason, until it exits (a second later).
    let not_ready = loop {
        let r = node.http.get(node.url("/readyz")).send().await.unwrap();
        if r.status() == 503 {
            let body = r.text().await.unwrap();
            if body.contains("storage failed") {
                break filled.elapsed();
            }
        }
        assert!(
            filled.elapsed() < Duration::from_secs(30),
            "no 503 from /readyz"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let status = node.wait_exit(Duration::from_secs(30)).await;
    let exited = filled.elapsed();
    assert_eq!(status.code(), Some(74), "exit status of a storage failure");
    eprintln!(
        "disk full: writes refused with {refused:?}, /readyz 503 after {not_ready:?}, exit after {exited:?} \
         ({} writes acknowledged)",
        acknowledged.len()
    );

    std::fs::remove_file(filler).unwrap();
    let node = Node::start_with(&data, &env, &flags);
    node.wait_ready().await;
    for code in &acknowledged {
        let (status, location) = node.redirect(code).await;
        assert_eq!(status, 302, "acknowledged link {code} lost");
        assert_eq!(
            location.as_deref(),
            Some(format!("https://example.com/{code}").as_str())
        );
    }
    assert!(node.terminate().success());
}

/// Copies the files of `from` into `to` (a directory tree of plain files).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The highest meta log index any of `nodes` reports.
async fn meta_last_log(nodes: &[&Node]) -> u64 {
    let mut last = 0;
    for node in nodes {
        let status = admin_status(node).await;
        last = last.max(status["groups"][0]["last_log"].as_u64().unwrap());
    }
    last
}

/// A node started on an old copy of its own data directory (a restored volume snapshot)
/// would roll a Raft member back in every group it holds (issue 17, item 4): it refuses,
/// once the cluster has recorded that the node acknowledged more than the copy holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_on_an_old_copy_of_its_data_refuses_and_says_to_rejoin() {
    let root = Root::new();
    let ([n1, _n2, n3], _) = trio(root.path(), &[]).await;
    let (id3, peer3, dir3) = (n3.node_id, n3.peer.clone(), n3.dir.clone());
    let copied_through = meta_last_log(&[&n1, &n3]).await;
    assert!(n3.terminate().success());
    let copy = root.path().join("n3-copy");
    copy_tree(&dir3, &copy);

    let n3 = member(root.path(), 3, None, &["--peer", &peer3]);
    n3.wait_ready().await;
    // Meta writes the copy does not hold, until the cluster records that node 3 has them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        n1.new_key(&["links:read"]).await;
        let status = admin_status(&n1).await;
        let recorded = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id3)
            .and_then(|n| n["meta_acknowledged"].as_u64());
        if recorded.is_some_and(|r| r > copied_through) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not record node 3's progress past {copied_through}: {recorded:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(n3.terminate().success());

    std::fs::remove_dir_all(&dir3).unwrap();
    std::fs::rename(&copy, &dir3).unwrap();
    let (status, stderr) = serve_until_exit(
        &dir3,
        &[
            "--http",
            "127.0.0.3:0",
            "--cluster",
            "127.0.0.3:0",
            "--peer",
            &peer3,
        ],
    );
    assert!(!status.success(), "it started on an old copy: {stderr}");
    assert!(
        stderr.contains("older than the cluster's record of node")
            && stderr.contains("rejoin as a new node"),
        "{stderr}"
    );
}
