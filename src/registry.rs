//! A client of a Confluent-compatible schema registry: the writer schema behind a Confluent
//! schema id, and the id of one of orderfold's own schemas under a subject. Requests are retried
//! with backoff until `avro.registry_timeout_ms`; "not found" is an answer, not a failure.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered that it has no such schema.
    #[error("schema registry {url}: no schema {what}")]
    NotFound { url: String, what: String },
    /// The registry could not be reached or failed; the caller must not guess.
    #[error("schema registry {url} unavailable for {what} after {waited_ms} ms: {error}")]
    Unavailable {
        url: String,
        what: String,
        waited_ms: u64,
        error: String,
    },
}

#[derive(Deserialize)]
struct SchemaById {
    schema: String,
}

#[derive(Serialize)]
struct Register<'a> {
    schema: &'a str,
}

#[derive(Deserialize)]
struct Registered {
    id: u32,
}

/// The first retry waits this long; each next one twice as long, up to `BACKOFF_MAX`.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

pub struct Registry {
    url: String,
    timeout: Duration,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("url", &self.url).finish()
    }
}

impl Registry {
    pub fn new(url: &str, timeout: Duration) -> Registry {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .build()
            .into();
        Registry {
            url: url.trim_end_matches('/').to_string(),
            timeout,
            agent,
        }
    }

    /// The writer schema registered under `id`.
    pub fn schema(&self, id: u32) -> Result<String, RegistryError> {
        let url = format!("{}/schemas/ids/{id}", self.url);
        self.retry(&format!("id {id}"), || {
            self.agent
                .get(&url)
                .call()?
                .body_mut()
                .read_json::<SchemaById>()
                .map(|s| s.schema)
        })
    }

    /// Registers `schema` under `subject` (idempotent: a schema already there keeps its id) and
    /// returns its id, as Confluent's serializers do before their first write.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let url = format!("{}/subjects/{subject}/versions", self.url);
        self.retry(&format!("under subject {subject}"), || {
            self.agent
                .post(&url)
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .send_json(Register { schema })?
                .body_mut()
                .read_json::<Registered>()
                .map(|r| r.id)
        })
    }

    fn retry<T>(
        &self,
        what: &str,
        mut call: impl FnMut() -> Result<T, ureq::Error>,
    ) -> Result<T, RegistryError> {
        let started = Instant::now();
        let mut backoff = BACKOFF_FIRST;
        loop {
            match call() {
                Ok(v) => return Ok(v),
                Err(ureq::Error::StatusCode(404)) => {
                    return Err(RegistryError::NotFound {
                        url: self.url.clone(),
                        what: what.to_string(),
                    })
                }
                Err(e) if started.elapsed() + backoff >= self.timeout => {
                    return Err(RegistryError::Unavailable {
                        url: self.url.clone(),
                        what: what.to_string(),
                        waited_ms: started.elapsed().as_millis() as u64,
                        error: e.to_string(),
                    })
                }
                Err(e) => {
                    tracing::warn!(url = %self.url, what, error = %e, "schema registry request failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}
