//! Test support shared by the store and report tests: a fresh database per
//! test (an SQLite file in a temporary directory, or a new PostgreSQL
//! database on the server at `PBX2MQTT_TEST_POSTGRES_URL`, dropped after),
//! and `backend_tests!`, which runs each test function on both backends.
//! Without `PBX2MQTT_TEST_POSTGRES_URL` when the tests are built, the
//! PostgreSQL tests are ignored (reported as skipped), never passed
//! (`build.rs` sets `cfg(pbx2mqtt_postgres)`).

use crate::store::Store;

/// The environment variable naming a PostgreSQL server for tests.
pub(crate) const POSTGRES_URL_VARIABLE: &str = "PBX2MQTT_TEST_POSTGRES_URL";

/// Which database a test runs against.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database for one test.
pub(crate) struct TestDatabase {
    /// Which backend it is.
    pub(crate) backend: Backend,
    /// The database URL.
    url: String,
    /// A store opened on it (migrated).
    pub(crate) store: Store,
    /// Holds the SQLite file's directory.
    _dir: Option<tempfile::TempDir>,
    /// For PostgreSQL: the server URL and the database to drop after.
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    /// A new database, or `None` (skip) for PostgreSQL when no server is set.
    pub(crate) async fn create(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("history.db").display());
                Some(Self {
                    backend,
                    store: Store::open(&url).await.unwrap(),
                    url,
                    _dir: Some(dir),
                    postgres: None,
                })
            }
            Backend::Postgres => {
                let server = std::env::var(POSTGRES_URL_VARIABLE).ok()?;
                let name = format!("pbx2mqtt_test_{:016x}", rand::random::<u64>());
                let admin = sqlx::PgPool::connect(&server).await.unwrap();
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&admin)
                    .await
                    .unwrap();
                admin.close().await;
                let mut url = url::Url::parse(&server).unwrap();
                url.set_path(&format!("/{name}"));
                Some(Self {
                    backend,
                    store: Store::open(url.as_str()).await.unwrap(),
                    url: url.to_string(),
                    _dir: None,
                    postgres: Some((server, name)),
                })
            }
        }
    }

    /// A new SQLite database.
    pub(crate) async fn sqlite() -> Self {
        // The SQLite backend never skips.
        Self::create(Backend::Sqlite).await.unwrap()
    }

    /// Opens another store on the same database.
    pub(crate) async fn open(&self) -> Store {
        Store::open(&self.url).await.unwrap()
    }

    /// Closes the store and drops a PostgreSQL test database (the SQLite
    /// tempdir goes by itself).
    pub(crate) async fn finish(self) {
        self.store.close().await;
        if let Some((server, name)) = &self.postgres {
            let admin = sqlx::PgPool::connect(server).await.unwrap();
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
        }
    }
}

/// Generates one `#[tokio::test]` per backend for each test function.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let database = $crate::store::test_database::TestDatabase::create($crate::store::test_database::Backend::Sqlite).await.unwrap();
                    super::$name(&database).await;
                    database.finish().await;
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(pbx2mqtt_postgres), ignore = "set PBX2MQTT_TEST_POSTGRES_URL to run")]
                async fn $name() {
                    let Some(database) = $crate::store::test_database::TestDatabase::create($crate::store::test_database::Backend::Postgres).await else {
                        panic!(
                            "{} was set when the tests were built but is not set now",
                            $crate::store::test_database::POSTGRES_URL_VARIABLE
                        );
                    };
                    super::$name(&database).await;
                    database.finish().await;
                }
            )*
        }
    };
}

pub(crate) use backend_tests;
