//! Real PostgreSQL, S3 (moto, SigV4 enforced) and NATS servers for the scale-out tests, each on a
//! free loopback port, each stopped when dropped (also when the test fails).
//!
//! - PostgreSQL 15 refuses to run as root, so `initdb` and `pg_ctl` run as the `postgres` user.
//!   `initdb` runs once per machine into a template (under a file lock, shared by parallel test
//!   processes); each cluster is a copy of it (0.2 s instead of 1.5 s).
//! - moto accepts any signature by default. It is started with `INITIAL_NO_AUTH_ACTION_COUNT=4`:
//!   the first four requests (create an IAM user, give it `s3:*`, make its access key, create the
//!   bucket) go unsigned; from then on every request must carry a valid SigV4 signature.
//! - nats-server runs plain core NATS on its port; it can be stopped and started again on the
//!   same port (NATS down, NATS back).
//!
//! `scripts/test.sh` installs what is missing (nats-server; moto through pip).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The kernel's ephemeral port range (where bind(0) and outgoing connections take their ports).
pub fn ephemeral_ports() -> std::ops::RangeInclusive<u16> {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = range.split_whitespace().map(|b| b.parse::<u16>());
    match (bounds.next(), bounds.next()) {
        (Some(Ok(low)), Some(Ok(high))) => low..=high,
        _ => 32768..=60999,
    }
}

/// Where ports for services are taken from: outside the ephemeral range (below it if there is
/// room, as by default, else above it), so that no outgoing connection of any process can take
/// one while its service starts.
/// (On a kernel whose ephemeral range leaves no such room, a range inside it: ports are still
/// never handed out twice.)
pub fn test_ports() -> std::ops::Range<u16> {
    let ephemeral = ephemeral_ports();
    if *ephemeral.start() >= 12_000 {
        10_000..(*ephemeral.start()).min(32_000)
    } else if *ephemeral.end() <= 55_000 {
        (*ephemeral.end() + 1)..65_000
    } else {
        20_000..32_000
    }
}

/// The lock files of the ports this test process holds (closing one would free its port).
static HELD_PORTS: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());

/// A loopback port that is free and stays this process's until it exits.
///
/// Binding port 0 and releasing it is not enough: nextest runs tests as parallel processes, each
/// starting several servers, and the kernel may hand the released port to another bind(0) or to
/// an outgoing connection before the service binds it. (CI once saw a test's moto port answered by
/// another test's server.) Each port here is claimed by `flock` on a file under
/// `$TMPDIR/bvfs-test-ports`, held for the life of the process (the kernel drops the lock when it
/// exits, however it exits), and checked to be bindable.
pub fn free_port() -> u16 {
    let dir = std::env::temp_dir().join("bvfs-test-ports");
    std::fs::create_dir_all(&dir).expect("create the test port lock directory");
    let ports = test_ports();
    let span = u32::from(ports.end - ports.start);
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
    for step in 0..span {
        let port = ports.start + ((seed.wrapping_add(step)) % span) as u16;
        let Ok(lock) = std::fs::File::create(dir.join(port.to_string())) else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        HELD_PORTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(lock);
        return port;
    }
    panic!("no free loopback port in {ports:?}");
}

/// Waits until `port` accepts connections.
fn wait_for_port(port: u16, what: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on port {port} within {secs} s");
}

fn run_as_postgres(args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .expect("run a PostgreSQL tool as the postgres user")
}

fn chown_postgres(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success(), "chown postgres {}", path.display());
}

/// A cluster made by `initdb` once, copied for every test.
fn pg_template() -> PathBuf {
    let root = std::env::temp_dir().join("bvfs-pg-template-15");
    let lock = std::fs::File::create(std::env::temp_dir().join("bvfs-pg-template.lock")).unwrap();
    lock.lock().unwrap();
    if root.join("ready").exists() {
        return root.join("data");
    }
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    chown_postgres(&root);
    let data = root.join("data");
    let out = run_as_postgres(&[
        &format!("{PG_BIN}/initdb"),
        "-D",
        data.to_str().unwrap(),
        "-U",
        "bvfs",
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-sync",
    ]);
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(root.join("ready"), b"").unwrap();
    data
}

/// A PostgreSQL cluster on a free port, with database `bvfs`; stopped and removed when dropped.
pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    /// `postgres://bvfs@127.0.0.1:PORT/bvfs`
    pub url: String,
    /// `pg_ctl -o` options (port, socket directory, durability, TLS).
    options: String,
}

impl Postgres {
    /// A cluster for tests: fsync off (a test never survives a power cut).
    pub fn start() -> Self {
        Self::start_with(false, None)
    }

    /// A cluster that fsyncs every commit, as a production one does (for benchmarks).
    pub fn start_durable() -> Self {
        Self::start_with(true, None)
    }

    /// A cluster that offers TLS with this certificate and key (PEM).
    pub fn start_tls(cert: &str, key: &str) -> Self {
        Self::start_with(false, Some((cert, key)))
    }

    fn start_with(durable: bool, tls: Option<(&str, &str)>) -> Self {
        let template = pg_template();
        let dir = tempfile::Builder::new()
            .prefix("bvfs-pg-")
            .tempdir()
            .unwrap();
        chown_postgres(dir.path());
        let data = dir.path().join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .status()
            .unwrap();
        assert!(status.success(), "copy the PostgreSQL template");
        let ssl = match tls {
            None => String::new(),
            Some((cert, key)) => {
                let (cert_path, key_path) =
                    (dir.path().join("server.pem"), dir.path().join("server.key"));
                std::fs::write(&cert_path, cert).unwrap();
                std::fs::write(&key_path, key).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
                    .unwrap();
                chown_postgres(dir.path());
                format!(
                    "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                    cert_path.display(),
                    key_path.display()
                )
            }
        };
        let port = free_port();
        let durability = if durable {
            ""
        } else {
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        };
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} {durability} {ssl} -c max_connections=200",
            dir.path().display()
        );
        let this = Self {
            url: format!("postgres://bvfs@127.0.0.1:{port}/bvfs"),
            dir,
            port,
            options,
        };
        this.resume();
        this.psql("postgres", "CREATE DATABASE bvfs");
        this
    }

    /// Adds superuser `user` who must log in over TCP with `password` (SCRAM); everyone else is
    /// still trusted.
    pub fn add_password_user(&self, user: &str, password: &str) {
        self.psql(
            "postgres",
            &format!("CREATE ROLE {user} LOGIN SUPERUSER PASSWORD '{password}'"),
        );
        let hba = self.dir.path().join("data/pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(
            &hba,
            format!("host all {user} 127.0.0.1/32 scram-sha-256\n{rules}"),
        )
        .unwrap();
        self.psql("postgres", "SELECT pg_reload_conf()");
    }

    /// Starts the cluster (again, after [`Postgres::stop`]) on the same port and data.
    pub fn resume(&self) {
        let out = run_as_postgres(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            self.dir.path().join("data").to_str().unwrap(),
            "-l",
            self.dir.path().join("log").to_str().unwrap(),
            "-w",
            "-o",
            &self.options,
            "start",
        ]);
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    /// Stops the cluster at once, as a crash would (connections cut, uncommitted work lost).
    pub fn stop(&self) {
        run_as_postgres(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            self.dir.path().join("data").to_str().unwrap(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }

    /// Runs SQL in database `db` and returns its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(format!("{PG_BIN}/psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "bvfs",
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A child process killed and reaped when dropped.
struct Guarded(Child);

/// Makes the child die with the thread that starts it (a test process killed by a timeout leaves
/// no server behind). Spawn from the test's own thread, which lives as long as the service.
fn die_with_parent(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// moto's S3 on a free port with SigV4 enforced and bucket `bvfs`; stopped when dropped.
pub struct Moto {
    child: Option<Guarded>,
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
    _log: tempfile::TempDir,
}

/// One unsigned request to moto (only the first four are let through); returns the body.
fn moto_bootstrap(port: u16, method: &str, path: &str, service: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // moto routes by the credential scope; the signature is not checked for these four.
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=bootstrap/20240101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "moto refused {method} {path}: {response}"
    );
    response
}

fn xml_field(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no {tag} in {xml}"))
        + open.len();
    let end = start + xml[start..].find('<').unwrap();
    xml[start..end].to_string()
}

/// moto starting (its Python start-up takes a second; other services start meanwhile).
pub struct MotoStarting {
    child: Guarded,
    port: u16,
    log: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Self {
        Self::spawn().ready()
    }

    /// Starts the process without waiting for it.
    pub fn spawn() -> MotoStarting {
        let log = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = die_with_parent(
            Command::new(moto_server())
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("INITIAL_NO_AUTH_ACTION_COUNT", "4")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log.path().join("moto.log")).unwrap()),
        )
        .spawn()
        .expect("start moto_server (pip install 'moto[server]')");
        MotoStarting {
            child: Guarded(child),
            port,
            log,
        }
    }
}

impl MotoStarting {
    /// Waits until moto answers, then makes the user, its key and the bucket.
    pub fn ready(self) -> Moto {
        let Self {
            mut child,
            port,
            log,
        } = self;
        wait_for_port(port, "moto", 30);
        // Whatever answers on the port must be this moto, not a server that took the port first.
        if let Ok(Some(status)) = child.0.try_wait() {
            let output = std::fs::read_to_string(log.path().join("moto.log")).unwrap_or_default();
            panic!("moto exited ({status}) yet port {port} answers:\n{output}");
        }
        let iam = |body: &str| moto_bootstrap(port, "POST", "/", "iam", body);
        iam("Action=CreateUser&UserName=bvfs&Version=2010-05-08");
        iam(
            "Action=PutUserPolicy&UserName=bvfs&PolicyName=all&Version=2010-05-08&PolicyDocument=\
             %7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow\
             %22%2C%22Action%22%3A%22s3%3A*%22%2C%22Resource%22%3A%22*%22%7D%5D%7D",
        );
        let key = iam("Action=CreateAccessKey&UserName=bvfs&Version=2010-05-08");
        moto_bootstrap(port, "PUT", "/bvfs", "s3", "");
        Moto {
            child: Some(child),
            port,
            access_key: xml_field(&key, "AccessKeyId"),
            secret_key: xml_field(&key, "SecretAccessKey"),
            _log: log,
        }
    }
}

impl Moto {
    /// The environment a server needs to reach this S3.
    /// Stops checking request signatures from now on. moto 5 checks a signature against the URL
    /// after decoding its query (werkzeug's `request.url` turns `prefix=a%2Fb` into `prefix=a/b`),
    /// so every correctly signed LIST whose prefix holds a `/` is refused as
    /// `SignatureDoesNotMatch`; real S3 checks the encoded form. Only tests that list (gc) call it.
    pub fn stop_checking_signatures(&self) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let body = "inf";
        let request = format!(
            "POST /moto-api/reset-auth HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.contains(" 200 "), "moto reset-auth: {response}");
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "AWS_ENDPOINT_URL".into(),
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
        ]
    }

    /// Stops moto (S3 down; its objects are gone with it).
    pub fn stop(&mut self) {
        self.child = None;
    }
}

/// `moto_server` on PATH, or beside the Python that has moto.
fn moto_server() -> PathBuf {
    std::env::var_os("BVFS_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("moto_server"))
}

/// nats-server on a free port; stopped when dropped.
pub struct Nats {
    child: Option<Guarded>,
    pub port: u16,
    pub url: String,
}

impl Nats {
    pub fn start() -> Self {
        let port = free_port();
        let mut nats = Self {
            child: None,
            port,
            url: format!("nats://127.0.0.1:{port}"),
        };
        nats.resume();
        nats
    }

    /// Stops the server (NATS down).
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Starts it again on the same port.
    pub fn resume(&mut self) {
        let child = die_with_parent(
            Command::new(nats_server())
                .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .spawn()
        .expect("start nats-server (apt-get install nats-server)");
        self.child = Some(Guarded(child));
        wait_for_port(self.port, "nats-server", 10);
    }
}

fn nats_server() -> PathBuf {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// PostgreSQL + S3 + NATS: everything a scale-out server needs, with the flags and environment to
/// give it.
pub struct ScaleOut {
    pub pg: Postgres,
    pub s3: Moto,
    pub nats: Nats,
}

impl ScaleOut {
    pub fn start() -> Self {
        Self::start_with(Postgres::start)
    }

    /// With a PostgreSQL that fsyncs its commits (one that must survive being killed).
    pub fn start_durable() -> Self {
        Self::start_with(Postgres::start_durable)
    }

    fn start_with(postgres: fn() -> Postgres) -> Self {
        // Side by side: moto's Python start-up dominates.
        let s3 = Moto::spawn();
        let pg = postgres();
        let nats = Nats::start();
        Self {
            pg,
            s3: s3.ready(),
            nats,
        }
    }

    /// `bvfs serve` flags for these backends.
    pub fn serve_args(&self) -> Vec<String> {
        vec![
            "--metadata".into(),
            self.pg.url.clone(),
            "--chunks".into(),
            "s3://bvfs/team".into(),
            "--notify".into(),
            self.nats.url.clone(),
        ]
    }
}
