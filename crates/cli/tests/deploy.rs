//! Deployment: the systemd unit (verified by `systemd-analyze verify`, and
//! the READY=1 / STOPPING=1 notifications it relies on, received on a real
//! notify socket), `seqfeed health` (the container's health check and the
//! launcher's pre-flight), and the Containerfile's commands run against the
//! built binary. No container runtime can pull base images here, so the
//! image itself is not built (see scripts/deploy/README.md).
#![allow(clippy::unwrap_used)]

mod common;

use common::{bin, p, pack_counting_source, run, stderr, stdout, Killed};

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn deploy_file(name: &str) -> String {
    let path = repo().join("scripts/deploy").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Packs 1000 u32 tokens into `root/data/web` and returns `root/data`.
fn dataset(root: &Path) -> PathBuf {
    let src = pack_counting_source(root, &[]);
    src.parent().unwrap().to_path_buf()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(path: &Path, limit: Duration) {
    let t = Instant::now();
    while !path.exists() {
        assert!(t.elapsed() < limit, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The unit file passes `systemd-analyze verify` with no complaint (it
/// prints warnings and still exits 0 for unknown keys or bad values, so any
/// output fails the test), and a broken copy does not.
#[test]
fn systemd_unit_verifies() {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        // scripts/setup.sh installs systemd; a machine without it cannot check the unit.
        eprintln!("SKIP systemd_unit_verifies: systemd-analyze is not installed (apt-get install systemd)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = deploy_file("seqfeed-node.service");
    assert!(
        unit.contains("Type=notify"),
        "readiness must be Type=notify"
    );
    assert!(unit.contains("LimitMEMLOCK=infinity"));
    // verify checks that ExecStart's binary exists: point it at the one built.
    let unit = unit.replace("/usr/local/bin/seqfeed", env!("CARGO_BIN_EXE_seqfeed"));
    let check = |text: &str| {
        let path = dir.path().join("seqfeed-node.service");
        std::fs::write(&path, text).unwrap();
        let o = Command::new(analyze)
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        (o.status.success(), stderr(&o) + &stdout(&o))
    };
    let (ok, out) = check(&unit);
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
    let (_, out) = check(&unit.replace("ProtectHome=read-only", "ProtectHome=bogus"));
    assert!(
        out.contains("ProtectHome") || out.contains("protect home"),
        "{out}"
    );
}

/// Under systemd (`NOTIFY_SOCKET` set), `serve` sends READY=1 once it
/// listens — a health check right after it succeeds — and STOPPING=1 on
/// SIGTERM.
#[test]
fn serve_notifies_systemd_when_ready_and_when_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let addr_file = dir.path().join("addr");
    let node = Killed(
        bin()
            .env("NOTIFY_SOCKET", &sock_path)
            .args(["--log", "warn", "serve", "--dataset", p(&data)])
            .args(["--listen", "127.0.0.1:0", "--addr-file", p(&addr_file)])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut buf = vec![0u8; 4096];
    let n = sock.recv(&mut buf).expect("no READY=1 within 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    assert!(
        msg.contains("STATUS=serving 1 files on 127.0.0.1:"),
        "{msg:?}"
    );
    // Ready means ready: the address file is there and the node answers.
    assert!(addr_file.exists());
    let o = run(&["health", "--json", p(&addr_file)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["files"], 1);
    // SIGTERM: STOPPING=1, then a clean exit.
    sigterm(node.0.id());
    let n = sock.recv(&mut buf).expect("no STOPPING=1 within 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg:?}");
    let mut node = node;
    let t = Instant::now();
    loop {
        if let Some(status) = node.0.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "serve did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM through the `kill` command (no libc dependency in this test).
fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM {pid}: {status:?}");
}

/// `health` waits for a node that is still starting (no address file yet),
/// fails fast with exit 1 and the address when nothing listens, and with
/// `--cluster` names the node that does not answer.
#[test]
fn health_waits_for_a_starting_node_and_names_a_dead_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let dead = format!("127.0.0.1:{}", free_port());
    let o = run(&["health", "--timeout-ms", "500", &dead]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&dead) && stderr(&o).contains("not healthy"),
        "{}",
        stderr(&o)
    );

    // The node starts 500 ms after health begins waiting for its address file.
    let addr_file = dir.path().join("addr");
    let waiter = bin()
        .args(["health", "--wait-ms", "30000", p(&addr_file)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _node = Killed(
        bin()
            .args(["--log", "warn", "serve", "--dataset", p(&data)])
            .args(["--listen", "127.0.0.1:0", "--name", "alive", "--addr-file"])
            .arg(&addr_file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let o = waiter.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("ok: node alive at 127.0.0.1:"),
        "{}",
        stdout(&o)
    );

    wait_for(&addr_file, Duration::from_secs(20));
    let alive = std::fs::read_to_string(&addr_file).unwrap();
    let cluster = dir.path().join("cluster.toml");
    let o = run(&[
        "--log",
        "warn",
        "place",
        "--dataset",
        p(&data),
        "--nodes",
        &format!("alive={},gone={dead}", alive.trim()),
        "--replicas",
        "2",
        "--out",
        p(&cluster),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[
        "health",
        "--json",
        "--timeout-ms",
        "500",
        "--cluster",
        p(&cluster),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", stdout(&o));
    assert!(lines
        .iter()
        .any(|v| v["node"] == "alive" && v["ok"] == true));
    assert!(lines
        .iter()
        .any(|v| v["node"] == "gone" && v["ok"] == false));
    assert!(
        stderr(&o).contains("node gone") && stderr(&o).contains("1 of 2 nodes"),
        "{}",
        stderr(&o)
    );
}

/// The JSON-form instruction `NAME ["a", "b"]` (possibly after options such
/// as HEALTHCHECK's `--interval=...  CMD`) from the Containerfile.
fn exec_form(file: &str, instruction: &str) -> Vec<String> {
    // Join continuation lines first.
    let joined = file.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.trim_start().starts_with(instruction))
        .unwrap_or_else(|| panic!("no {instruction} in the Containerfile"));
    let start = line
        .find('[')
        .unwrap_or_else(|| panic!("{instruction} is not in exec form: {line}"));
    serde_json::from_str(&line[start..]).unwrap_or_else(|e| panic!("{instruction}: {e}: {line}"))
}

/// The Containerfile's ENTRYPOINT + CMD and its HEALTHCHECK, run with the
/// built binary (the dataset volume and port swapped for local ones): the
/// node starts, and the health check passes against it. Also: every COPY
/// source of the build stage exists, and the runtime stage runs as a
/// non-root user.
#[test]
fn containerfile_commands_run_against_the_built_binary() {
    let file = deploy_file("Containerfile");
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let port = free_port();
    let swap = |arg: &str| {
        arg.replace("/data", p(&data))
            .replace("0.0.0.0:7000", &format!("127.0.0.1:{port}"))
            .replace("127.0.0.1:7000", &format!("127.0.0.1:{port}"))
    };
    let entry = exec_form(&file, "ENTRYPOINT");
    let cmd = exec_form(&file, "CMD");
    let health = exec_form(&file, "HEALTHCHECK");
    assert_eq!(entry[0], "seqfeed");
    assert_eq!(health[0], "seqfeed");
    assert!(file.contains("EXPOSE 7000"));
    assert!(
        file.contains("USER seqfeed"),
        "the node must not run as root"
    );
    let args: Vec<String> = entry[1..].iter().chain(&cmd).map(|a| swap(a)).collect();
    let _node = Killed(bin().args(&args).stderr(Stdio::null()).spawn().unwrap());
    let probe: Vec<String> = health[1..].iter().map(|a| swap(a)).collect();
    let t = Instant::now();
    loop {
        let o = bin().args(&probe).output().unwrap();
        if o.status.success() {
            assert!(stdout(&o).starts_with("ok: node "), "{}", stdout(&o));
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the health check never passed: {}",
            stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for line in file.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("COPY ") {
            if rest.starts_with("--from") {
                continue;
            }
            let parts: Vec<&str> = rest.split_whitespace().collect();
            for src in &parts[..parts.len() - 1] {
                assert!(repo().join(src).exists(), "COPY source {src} is missing");
            }
        }
    }
}

/// A node started under `ulimit -n 64` (as a misconfigured unit would be)
/// and flooded with 80 silent connections runs out of descriptors in
/// `accept`: it logs that once, sheds the oldest unauthenticated
/// connections, stays up, and a real client still gets its answer.
#[test]
fn a_node_out_of_file_descriptors_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let addr_file = dir.path().join("addr");
    let log = dir.path().join("node.log");
    let node = Killed(
        Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_seqfeed"))
            .args(["--log", "warn", "serve", "--dataset", p(&data)])
            .args(["--listen", "127.0.0.1:0", "--addr-file", p(&addr_file)])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(&addr_file, Duration::from_secs(20));
    let addr = std::fs::read_to_string(&addr_file).unwrap();
    let silent: Vec<std::net::TcpStream> = (0..80)
        .map(|_| std::net::TcpStream::connect(addr.trim()).unwrap())
        .collect();
    // One attempt with a long reply timeout: the client waits in the
    // listen backlog while the node sheds silent connections to make room.
    let o = run(&["health", "--timeout-ms", "20000", addr.trim()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut node = node;
    assert!(node.0.try_wait().unwrap().is_none(), "the node exited");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("accept failed; backing off") && text.contains("Too many open files"),
        "{text}"
    );
    // Rate-limited: at most the warning budget (10 per interval), not one per failed accept.
    let lines = text.matches("accept failed; backing off").count();
    assert!(
        (1..=10).contains(&lines),
        "{lines} accept warnings:\n{text}"
    );
    drop(silent);
}
