//! orderfold: an event-sourced stream processor that folds order, payment, logistics and
//! inventory events into per-SKU and per-order state, and emits reservation expiries,
//! tracking status and oversell alerts, deterministically on replay.
//!
//! The modules follow the data: `codec` (decode) → `merge` → `fold` (pure rules) → `state`
//! → `sink`, with the `stage` tasks tying them together per partition, `driver` running a whole
//! topology without a broker, and `config`, `metrics` and the `http` server beside them.

pub mod bench;
pub mod canonical;
pub mod changelog;
pub mod codec;
pub mod compare;
pub mod config;
pub mod driver;
pub mod event;
pub mod fold;
pub mod generate;
pub mod http;
pub mod ids;
pub mod inspect;
pub mod kafka;
pub mod latency;
pub mod merge;
pub mod metrics;
pub mod partition;
pub mod query;
pub mod registry;
pub mod replay;
pub mod runtime;
pub mod simulate;
pub mod sink;
pub mod stage;
pub mod state;
pub mod validate;
pub mod verify;
