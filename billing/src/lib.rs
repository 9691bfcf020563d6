//! Billing: what tenants pay for the calls they make.
//!
//! Built so far: [`pricing`], the rating of a month of usage against a price plan and prepaid
//! packages, as pure functions; and [`store`], metering records aggregated idempotently into
//! hourly usage on SQLite or PostgreSQL. Metering in the proxy, invoices and exports build on
//! them (see docs/design-notes.md, "Billing").

pub mod pricing;
pub mod store;
