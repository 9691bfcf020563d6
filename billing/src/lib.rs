//! Billing: what tenants pay for the calls they make.
//!
//! - [`pricing`]: the rating of a month of usage against a price plan and prepaid packages, as
//!   pure functions.
//! - [`store`]: metering records counted idempotently into hourly usage, plans, packages,
//!   budgets and alerts, on SQLite or PostgreSQL.
//! - [`service`]: the loops of the `strata billing` role: counting the metering queue, and
//!   enforcing budgets and hard caps.
//! - [`api`]: usage, invoices and alerts over HTTP (JSON and CSV), and the operators' routes.
//!
//! See docs/design-notes.md, "Billing".

pub mod api;
pub mod pricing;
pub mod service;
pub mod store;
