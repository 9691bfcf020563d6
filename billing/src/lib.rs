//! Billing: what tenants pay for the calls they make.
//!
//! Built so far: [`pricing`], the rating of a month of usage against a price plan and prepaid
//! packages, as pure functions. Metering records, their idempotent aggregation into hourly
//! usage, the SQL stores, invoices and exports build on it (see docs/design-notes.md,
//! "Billing").

pub mod pricing;
