//! Chaos tests for Linkrift: real `linkrift` processes on 127.0.0.x with the real
//! PostgreSQL and ClickHouse, faults injected while a recorded workload runs, and checkers
//! that read the record. `linkrift-chaos --help` runs them; `docs/RELIABILITY.md` says
//! what they found.

pub mod check;
pub mod history;
