//! Real PostgreSQL for tests and the benchmark, through the same code as
//! `serve`'s private cluster (`postback::pgcluster::Cluster`):
//!
//! - [`fresh_database`]: one cluster shared by every test of a test binary
//!   (or the server at `DATABASE_URL`), started on first use and stopped
//!   when the process exits, with a new empty database per call;
//! - [`PrivatePg`]: a cluster of its own (a fault case may stop and start
//!   it; the benchmark measures it), stopped when dropped, also on panic.
//!
//! It must not migrate anything it was not asked to, nor touch a cluster
//! it did not start (a `DATABASE_URL` server only gets new databases).

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Context;
use postback::pgcluster::Cluster;
use sqlx::PgPool;

// ------------------------------------------------------------ shared

struct SharedCluster {
    /// URL template with `{db}` where the database name goes.
    template: String,
    admin_url: String,
}

static CLUSTER: OnceLock<SharedCluster> = OnceLock::new();
static CLUSTER_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn stop_cluster_at_exit() {
    if let Some(dir) = CLUSTER_DIR.get() {
        if let Some(bin) = postback::pgcluster::find_server_binaries() {
            let mut cmd = std::process::Command::new(bin.join("pg_ctl"));
            cmd.args([
                "-D",
                &dir.join("data").to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ]);
            if nix::unistd::geteuid().is_root() {
                if let Ok(Some(user)) = nix::unistd::User::from_name("postgres") {
                    use std::os::unix::process::CommandExt;
                    cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
                }
            }
            let _ = cmd
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn shared() -> &'static SharedCluster {
    CLUSTER.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            let mut parsed = url::Url::parse(&url).expect("DATABASE_URL is a URL");
            parsed.set_path("/{db}");
            let template = parsed.to_string().replace("%7Bdb%7D", "{db}");
            return SharedCluster {
                template,
                admin_url: url,
            };
        }
        let dir = std::env::temp_dir().join(format!("postback-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cluster = Cluster::start(&dir).expect("start the test PostgreSQL cluster");
        let _ = CLUSTER_DIR.set(dir);
        // The test harness exits through process::exit: stop the server then.
        // SAFETY: registers a plain `extern "C" fn` with no captured state.
        unsafe {
            libc::atexit(stop_cluster_at_exit);
        }
        let admin_url = cluster.url();
        let template = cluster.url_for("{db}");
        cluster.detach();
        SharedCluster {
            template,
            admin_url,
        }
    })
}

/// A fresh, empty database of its own for one test, on the cluster shared
/// by this test binary (started on first use), or on `DATABASE_URL`'s
/// server when that is set.
pub async fn fresh_database() -> String {
    let shared = shared();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = PgPool::connect(&shared.admin_url)
        .await
        .expect("connect admin");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    shared.template.replace("{db}", &name)
}

/// A small pool on `url` whose connections see Postback's tables
/// (`search_path` is `postback`).
pub async fn postback_pool(url: &str) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET search_path TO postback")
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .expect("test pool")
}

// ------------------------------------------------------------ private

/// A private cluster in a directory of its own: its user may stop and
/// start it at will without touching anyone else's database. Dropping it
/// stops the server (and removes the directory when it made it).
pub struct PrivatePg {
    cluster: Option<Cluster>,
    dir: PathBuf,
    remove_dir: bool,
}

impl PrivatePg {
    /// initdb + start, in a fresh temporary directory named after `case`
    /// (removed on drop); panics when that fails.
    pub async fn start(case: &str) -> PrivatePg {
        let dir = std::env::temp_dir().join(format!("pbf-{}-{case}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut pg = Self::start_in(dir)
            .await
            .expect("start a private PostgreSQL cluster");
        pg.remove_dir = true;
        pg
    }

    /// initdb (on first use) + start in `dir`, which its caller owns (it
    /// is left in place on drop).
    pub async fn start_in(dir: PathBuf) -> anyhow::Result<PrivatePg> {
        let at = dir.clone();
        let cluster = tokio::task::spawn_blocking(move || Cluster::start(&at))
            .await
            .context("cluster start task")?
            .context("start the private PostgreSQL cluster")?;
        Ok(PrivatePg {
            cluster: Some(cluster),
            dir,
            remove_dir: false,
        })
    }

    fn cluster(&self) -> &Cluster {
        self.cluster.as_ref().expect("cluster")
    }

    /// The libpq URL of its `postgres` database.
    pub fn url(&self) -> String {
        self.cluster().url()
    }

    /// The libpq URL of its database `db`.
    pub fn url_for(&self, db: &str) -> String {
        self.cluster().url_for(db)
    }

    /// A pool on its `postgres` database, with Postback's schema migrated.
    pub async fn pool(&self) -> PgPool {
        let pool = postback_pool(&self.url()).await;
        postback::migrate(&pool).await.expect("migrate");
        pool
    }

    /// Runs `f` on the cluster on a blocking thread (pg_ctl waits).
    async fn blocking<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Cluster) -> R + Send + 'static,
    ) -> R {
        let mut cluster = self.cluster.take().expect("cluster");
        let (cluster, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut cluster);
            (cluster, out)
        })
        .await
        .expect("join");
        self.cluster = Some(cluster);
        out
    }

    /// `pg_ctl stop -m fast` as the cluster's owner; returns once it is down.
    pub async fn stop_for_restart(&mut self) {
        let stopped = self.blocking(|c| c.stop_for_restart()).await;
        stopped.expect("pg_ctl stop -m fast");
    }

    /// `pg_ctl start` again on the same data and socket.
    pub async fn start_again(&mut self) {
        let started = self.blocking(Cluster::start_again).await;
        started.expect("pg_ctl start");
    }

    /// `pg_ctl stop -m fast`, then `pg_ctl start` again on the same data
    /// and socket, as the cluster's owner; an error (not a panic) when
    /// either fails.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.blocking(|c| {
            c.stop_for_restart().context("pg_ctl stop -m fast")?;
            c.start_again().context("pg_ctl start")
        })
        .await
    }

    /// Stops the server and says whether it stopped cleanly.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut cluster) = self.cluster.take() {
            tokio::task::spawn_blocking(move || cluster.stop())
                .await
                .context("cluster stop task")?
                .context("stop the private PostgreSQL cluster")?;
        }
        Ok(())
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        if let Some(mut cluster) = self.cluster.take() {
            // Already down (a case that stopped it and then failed) is fine.
            let _ = cluster.stop();
        }
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
