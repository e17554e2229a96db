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
    /// `url` as logs and errors show it: credentials in it replaced by `***`.
    shown_url: String,
    /// The credentials part of `url` (`user:secret`), scrubbed from any error text.
    userinfo: Option<String>,
    timeout: Duration,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.shown_url)
            .finish()
    }
}

impl Registry {
    pub fn new(url: &str, timeout: Duration) -> Registry {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .build()
            .into();
        let url = url.trim_end_matches('/').to_string();
        let userinfo = userinfo(&url).map(str::to_string);
        let shown_url = match &userinfo {
            Some(u) => url.replacen(&format!("{u}@"), "***@", 1),
            None => url.clone(),
        };
        Registry {
            url,
            shown_url,
            userinfo,
            timeout,
            agent,
        }
    }

    /// `text` with the URL's credentials replaced by `***`.
    fn scrub(&self, text: &str) -> String {
        match &self.userinfo {
            Some(u) => text.replace(u.as_str(), "***"),
            None => text.to_string(),
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
                        url: self.shown_url.clone(),
                        what: what.to_string(),
                    })
                }
                Err(e) if started.elapsed() + backoff >= self.timeout => {
                    return Err(RegistryError::Unavailable {
                        url: self.shown_url.clone(),
                        what: what.to_string(),
                        waited_ms: started.elapsed().as_millis() as u64,
                        error: self.scrub(&e.to_string()),
                    })
                }
                Err(e) => {
                    tracing::warn!(
                        url = %self.shown_url,
                        what,
                        error = %self.scrub(&e.to_string()),
                        "schema registry request failed; retrying"
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// The `user:secret` of `scheme://user:secret@host/...`, if the URL has one.
fn userinfo(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    authority.rfind('@').map(|at| &authority[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry URL is where its credentials go: no log line or error may show them.
    #[test]
    fn errors_and_debug_output_never_show_the_urls_credentials() {
        let registry = Registry::new(
            "http://orderfold:s3cret-pass@127.0.0.1:9/",
            Duration::from_millis(300),
        );
        let err = registry.schema(7).unwrap_err().to_string();
        assert!(err.contains("http://***@127.0.0.1:9"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        assert!(!format!("{registry:?}").contains("s3cret"));
        let plain = Registry::new("http://127.0.0.1:9", Duration::from_millis(1));
        assert_eq!(plain.shown_url, "http://127.0.0.1:9");
    }
}
