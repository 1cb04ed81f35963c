//! The private PostgreSQL cluster that `serve` runs when `DATABASE_URL` is
//! unset (SPEC §1), and that the test suite and the benchmark start the same
//! way. It owns finding the server binaries, `initdb` on first use, the
//! tuned configuration, start and stop. It listens on a Unix socket inside
//! its own directory only (no TCP port, nothing for other hosts to reach).
//! It must not know anything about Postback's schema.
//!
//! PostgreSQL refuses to run as root, and CI and many servers run as root:
//! then every server command runs as the unprivileged `postgres` system user
//! and the data directory is handed to it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why the private cluster could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No `initdb`/`pg_ctl` on PATH nor under /usr/lib/postgresql/*/bin.
    #[error(
        "no PostgreSQL server binaries found (looked on PATH and under /usr/lib/postgresql/*/bin) \
         and DATABASE_URL is not set: either install the PostgreSQL server (e.g. `apt-get install postgresql`) \
         or set DATABASE_URL to an existing database"
    )]
    NoBinaries,
    /// Running as root without a `postgres` user to hand the cluster to.
    #[error(
        "running as root, and PostgreSQL refuses to run as root, but there is no `postgres` system user; \
         create one (`useradd -r postgres`), run as an ordinary user, or set DATABASE_URL"
    )]
    NoUnprivilegedUser,
    /// The data directory cannot be used.
    #[error("POSTBACK_DATA_DIR {path}: {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A server command failed.
    #[error("{command} failed: {output}")]
    Command {
        /// Which command.
        command: String,
        /// What it printed.
        output: String,
    },
}

/// Settings written into the cluster's `postback.conf`, each with its reason.
/// Durability stays on: nothing here may lose a committed delivery.
const TUNING: &str = "\
# Written by postback at every start; edit postgresql.conf to override.
listen_addresses = ''                # Unix socket only: nothing reachable from other hosts
max_connections = 300                # API pool + workers + CLI + tests, with headroom
shared_buffers = 256MB               # hot queue pages and indexes stay in memory
fsync = on                           # durability is not negotiable
synchronous_commit = on              # an accepted delivery survives a crash
wal_compression = on                 # the queue rewrites small rows; compress full-page images
max_wal_size = 4GB                   # fewer checkpoints under sustained load
checkpoint_timeout = 15min           # ditto; recovery time stays bounded
checkpoint_completion_target = 0.9   # spread checkpoint I/O
commit_delay = 200                   # µs: lets concurrent API commits share one WAL flush (group commit); durability unchanged
commit_siblings = 4                  # only when at least 4 other transactions are active (light load pays nothing)
autovacuum_naptime = 10s             # the deliveries table churns: vacuum it often
autovacuum_vacuum_cost_limit = 2000  # and let vacuum keep up with the churn
log_min_messages = warning
log_checkpoints = off
";

/// A running private cluster. Stop it with [`Cluster::stop`]; dropping it
/// without stopping leaves the server running (so a crash of Postback does
/// not take the data down mid-write; the next start reuses it).
#[derive(Debug)]
pub struct Cluster {
    bin_dir: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    owner: Option<(u32, u32)>,
    stopped: bool,
    /// The server was already running on the data directory at start.
    adopted: bool,
}

impl Cluster {
    /// Finds the binaries, `initdb`s `dir` on first use, starts the server.
    pub fn start(dir: &Path) -> Result<Cluster, ClusterError> {
        let bin_dir = find_server_binaries().ok_or(ClusterError::NoBinaries)?;
        let owner = unprivileged_owner()?;
        let root = absolute(dir)?;
        let data = root.join("data");
        let socket_dir = root.join("run");
        prepare_dirs(&root, &data, &socket_dir, owner)?;
        let mut cluster = Cluster {
            bin_dir,
            data,
            socket_dir,
            owner,
            stopped: false,
            adopted: false,
        };
        if !cluster.data.join("PG_VERSION").exists() {
            cluster.initdb()?;
        }
        cluster.write_tuning()?;
        // A postmaster left running on this data directory (an earlier
        // start that died, or failed before it could stop it) holds the
        // directory's lock: `pg_ctl start` would fail on it forever. Adopt
        // it when it listens where we connect; otherwise stop it and start
        // afresh.
        if cluster.running() {
            if cluster.socket_dir.join(".s.PGSQL.5432").exists() {
                cluster.adopted = true;
                return Ok(cluster);
            }
            cluster.stop_for_restart()?;
        }
        if let Err(err) = cluster.pg_ctl_start() {
            // `pg_ctl -w` can give up (its timeout) on a server that then
            // comes up anyway: stop it, or it would hold the lock.
            if cluster.running() {
                let _ = cluster.stop_for_restart();
            }
            return Err(err);
        }
        Ok(cluster)
    }

    /// Whether this start found the server already running (and uses it).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Whether a postmaster runs on the data directory (`pg_ctl status`).
    pub fn running(&self) -> bool {
        self.run("pg_ctl", &["-D", path_str(&self.data), "status"])
            .is_ok()
    }

    /// The libpq URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The libpq URL of database `db` in this cluster.
    pub fn url_for(&self, db: &str) -> String {
        socket_url(&self.socket_dir, db)
    }

    /// Stops the server (fast shutdown: sessions end, data is flushed).
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.stop_for_restart()
    }

    /// Stops the server (fast shutdown, as [`Cluster::stop`]) but keeps the
    /// handle usable: [`Cluster::start_again`] brings the same data back on
    /// the same socket. For maintenance windows and the fault tests, which
    /// take the database away under a running Postback.
    pub fn stop_for_restart(&self) -> Result<(), ClusterError> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
            ],
        )
        .map(|_| ())
    }

    /// Starts the server again after [`Cluster::stop_for_restart`].
    pub fn start_again(&mut self) -> Result<(), ClusterError> {
        self.pg_ctl_start()?;
        self.stopped = false;
        Ok(())
    }

    /// Marks the cluster as not to be stopped by this handle.
    pub fn detach(mut self) {
        self.stopped = true;
    }

    fn initdb(&self) -> Result<(), ClusterError> {
        self.run(
            "initdb",
            &[
                "-D",
                path_str(&self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
            ],
        )?;
        let conf = self.data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).map_err(|e| self.data_err(e))?;
        text.push_str("\ninclude_if_exists = 'postback.conf'\n");
        fs::write(&conf, text).map_err(|e| self.data_err(e))?;
        Ok(())
    }

    fn write_tuning(&self) -> Result<(), ClusterError> {
        let path = self.data.join("postback.conf");
        let text = format!(
            "{TUNING}unix_socket_directories = '{}'\n",
            self.socket_dir.display()
        );
        fs::write(&path, text).map_err(|e| self.data_err(e))?;
        chown(&path, self.owner)
    }

    fn pg_ctl_start(&self) -> Result<(), ClusterError> {
        let log = self.socket_dir.join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data),
                "-l",
                path_str(&log),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .map_err(|e| match e {
            ClusterError::Command { command, output } => {
                let tail = fs::read_to_string(&log)
                    .map(|l| l.lines().rev().take(10).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default();
                ClusterError::Command {
                    command,
                    output: format!("{output}\nserver log:\n{tail}"),
                }
            }
            other => other,
        })?;
        Ok(())
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, ClusterError> {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.args(args)
            .stdin(Stdio::null())
            .env("LC_ALL", "C")
            .env_remove("PGDATA");
        if let Some((uid, gid)) = self.owner {
            // std drops supplementary groups (setgroups) when root sets a uid.
            cmd.uid(uid).gid(gid);
        }
        // pg_ctl's server inherits these; keep the server out of our process
        // group so a Ctrl-C in the terminal reaches Postback (which then stops
        // the server cleanly) rather than killing PostgreSQL mid-flight.
        cmd.process_group(0);
        let out = cmd.output().map_err(|e| ClusterError::Command {
            command: program.to_owned(),
            output: e.to_string(),
        })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(ClusterError::Command {
                command: format!("{program} {}", args.join(" ")),
                output: text,
            })
        }
    }

    fn data_err(&self, e: std::io::Error) -> ClusterError {
        ClusterError::DataDir {
            path: self.data.clone(),
            reason: e.to_string(),
        }
    }
}

/// The libpq URL of database `db` of a cluster whose socket is in `socket_dir`.
fn socket_url(socket_dir: &Path, db: &str) -> String {
    format!(
        "postgres://postgres@localhost/{db}?host={}",
        socket_dir.display()
    )
}

/// The URL of the private cluster kept under `dir` (`POSTBACK_DATA_DIR`),
/// when one was ever created there; `None` otherwise. Whether it is running
/// is for the connection to find out. The admin commands use it when
/// `DATABASE_URL` is unset (SPEC §1).
pub fn existing_url(dir: &Path) -> Option<String> {
    let root = absolute(dir).ok()?;
    root.join("data")
        .join("PG_VERSION")
        .is_file()
        .then(|| socket_url(&root.join("run"), "postgres"))
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: PATH first, then
/// the newest version under /usr/lib/postgresql.
pub fn find_server_binaries() -> Option<PathBuf> {
    find_server_binaries_in(std::env::var_os("PATH"), Path::new("/usr/lib/postgresql"))
}

/// [`find_server_binaries`] over a given PATH value and versions root.
pub fn find_server_binaries_in(
    path: Option<std::ffi::OsString>,
    versions_root: &Path,
) -> Option<PathBuf> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(path) = path {
        if let Some(dir) = std::env::split_paths(&path).find(|d| has_all(d)) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(versions_root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_all(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// `Some((uid, gid))` of the `postgres` user when we are root, `None` when
/// the server can run as ourselves.
fn unprivileged_owner() -> Result<Option<(u32, u32)>, ClusterError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some((user.uid.as_raw(), user.gid.as_raw()))),
        _ => Err(ClusterError::NoUnprivilegedUser),
    }
}

fn absolute(dir: &Path) -> Result<PathBuf, ClusterError> {
    let err = |e: std::io::Error| ClusterError::DataDir {
        path: dir.to_owned(),
        reason: e.to_string(),
    };
    fs::create_dir_all(dir).map_err(err)?;
    dir.canonicalize().map_err(err)
}

fn prepare_dirs(
    root: &Path,
    data: &Path,
    socket_dir: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(), ClusterError> {
    let err = |path: &Path, e: std::io::Error| ClusterError::DataDir {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    for dir in [data, socket_dir] {
        fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| err(dir, e))?;
        chown(dir, owner)?;
    }
    chown(root, owner)?;
    if let Some((uid, _)) = owner {
        ensure_traversable(root, uid)?;
    }
    // A Unix socket path is limited to 107 bytes.
    let socket = socket_dir.join(".s.PGSQL.5432");
    if socket.as_os_str().len() > 100 {
        return Err(ClusterError::DataDir {
            path: root.to_owned(),
            reason: "the path is too long for a Unix socket; choose a shorter POSTBACK_DATA_DIR"
                .into(),
        });
    }
    Ok(())
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), ClusterError> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| ClusterError::DataDir {
        path: path.to_owned(),
        reason: format!("cannot hand it to the postgres user: {e}"),
    })
}

/// The `postgres` user must be able to walk down to the data directory.
fn ensure_traversable(root: &Path, uid: u32) -> Result<(), ClusterError> {
    for ancestor in root.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(ancestor) else {
            continue;
        };
        let mode = std::os::unix::fs::MetadataExt::mode(&meta);
        let owner = std::os::unix::fs::MetadataExt::uid(&meta);
        if mode & 0o001 == 0 && owner != uid {
            return Err(ClusterError::DataDir {
                path: root.to_owned(),
                reason: format!(
                    "the postgres user cannot enter {} (mode {:o}); choose a POSTBACK_DATA_DIR outside it, e.g. under /var/lib or /tmp",
                    ancestor.display(),
                    mode & 0o777
                ),
            });
        }
    }
    Ok(())
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bin(dir: &Path) {
        fs::create_dir_all(dir).ok();
        for b in ["initdb", "pg_ctl", "postgres"] {
            fs::write(dir.join(b), "").ok();
        }
    }

    #[test]
    fn binaries_are_found_on_path_first_then_the_newest_version() {
        let root = std::env::temp_dir().join(format!("pb-bins-{}", uuid::Uuid::new_v4()));
        let on_path = root.join("path-bin");
        let versions = root.join("lib");
        fake_bin(&versions.join("13/bin"));
        fake_bin(&versions.join("16/bin"));
        fs::create_dir_all(versions.join("17/bin")).ok(); // incomplete: skipped
        assert_eq!(
            find_server_binaries_in(None, &versions),
            Some(versions.join("16/bin"))
        );
        fake_bin(&on_path);
        let path = std::env::join_paths([root.join("nothing"), on_path.clone()]).ok();
        assert_eq!(find_server_binaries_in(path, &versions), Some(on_path));
        let empty = root.join("empty");
        assert_eq!(find_server_binaries_in(None, &empty), None);
        fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn missing_binaries_message_names_both_ways_out() {
        let text = ClusterError::NoBinaries.to_string();
        assert!(text.contains("DATABASE_URL"), "{text}");
        assert!(text.contains("install the PostgreSQL server"), "{text}");
    }
}
