//! Reads this machine's task state directories for a config's application id: what
//! `orderfold inspect` prints and what checks compare. Opens RocksDB read-only, so it works
//! while the service runs.

use std::path::PathBuf;

use crate::codec::Codec;
use crate::config::Config;
use crate::kafka::TopicNames;
use crate::stage::order::{OrderTask, OrderView};
use crate::stage::sku::{SkuTask, SkuView};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("no task state under {0}")]
    NoState(PathBuf),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Task(#[from] crate::stage::TaskError),
    #[error("codec: {0}")]
    Schema(#[from] crate::codec::SchemaError),
}

/// The tasks whose state this machine holds, opened read-only.
pub struct LocalState {
    pub order_tasks: Vec<OrderTask>,
    pub sku_tasks: Vec<SkuTask>,
}

fn task_dirs(root: &std::path::Path, prefix: &str) -> Result<Vec<(u32, PathBuf)>, InspectError> {
    let entries = std::fs::read_dir(root).map_err(|_| InspectError::NoState(root.into()))?;
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| InspectError::Io {
            path: root.into(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(p) = name
            .strip_prefix(prefix)
            .and_then(|n| n.parse::<u32>().ok())
        {
            dirs.push((p, entry.path()));
        }
    }
    dirs.sort();
    Ok(dirs)
}

impl LocalState {
    pub fn open(config: &Config) -> Result<LocalState, InspectError> {
        let mut config = config.clone();
        config.state.read_only = true;
        let codec = Codec::new()?;
        let names = TopicNames::from_config(&config);
        let root = config.state.dir.join(&config.kafka.application_id);
        let mut order_tasks = Vec::new();
        for (p, dir) in task_dirs(&root, "order-")? {
            let topics = names.order_inputs().map(String::from);
            order_tasks.push(OrderTask::open(&dir, p, topics, codec.clone(), &config)?);
        }
        let mut sku_tasks = Vec::new();
        for (p, dir) in task_dirs(&root, "sku-")? {
            let topics = names.sku_inputs().map(String::from);
            // The order partition count only matters to a running task's watermark.
            sku_tasks.push(SkuTask::open(&dir, p, topics, 1, codec.clone(), &config)?);
        }
        Ok(LocalState {
            order_tasks,
            sku_tasks,
        })
    }

    pub fn sku(&self, id: &str) -> Result<Option<SkuView>, InspectError> {
        for t in &self.sku_tasks {
            if let Some(v) = t.sku_view(id)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    pub fn order(&self, id: &str) -> Result<Option<OrderView>, InspectError> {
        for t in &self.order_tasks {
            if let Some(view) = t.order_view(id)? {
                return Ok(Some(view));
            }
        }
        Ok(None)
    }

    /// Every SKU, in sku order.
    pub fn skus(&self) -> Result<Vec<SkuView>, InspectError> {
        Ok(crate::stage::sku::skus_of(&self.sku_tasks)?)
    }

    /// Every order with its tracking, in order_id order.
    pub fn orders(&self) -> Result<Vec<OrderView>, InspectError> {
        Ok(crate::stage::order::orders_of(&self.order_tasks)?)
    }
}
