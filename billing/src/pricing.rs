//! Pricing: billable units of a call, and the rating of a month of a tenant's usage against its
//! price plan and prepaid packages. Pure functions of their inputs: no clock, no store.
//!
//! # Rules
//!
//! - A call is billed ⌈payload / 64 KiB⌉ units, at least one ([`billable_units`]).
//! - Months are calendar months in UTC ([`Month`]); usage comes in hours, each wholly inside
//!   one month.
//! - Pay-per-call plans: each hour's units are taken, in order, from the month's free tier,
//!   then from prepaid packages valid at that hour (the one expiring first before the others),
//!   then on demand at the plan's price. A package or the free tier can run out in the middle of
//!   an hour; the rest of that hour goes to the next source. Free units reset every month;
//!   package balances carry over until the package expires.
//! - Dedicated plans: a flat monthly fee; calls are counted but not priced, and neither the
//!   free tier nor packages are drawn.
//! - Money is integer micro-units of the currency ([`Micros`]); an on-demand line is priced once
//!   from its month's total units and rounded to the nearest micro-unit (half up), so no
//!   rounding accumulates per call or per hour.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

pub use strata_common::metering::{UNIT_PAYLOAD_BYTES, billable_units};
/// One hour in milliseconds: usage is kept per hour.
pub const HOUR_MS: u64 = strata_common::metering::USAGE_HOUR_MS;

/// Money in millionths of the currency unit (1 USD = 1,000,000).
pub type Micros = u64;

/// Money as a decimal with its six places, e.g. `0.400000`.
pub fn format_micros(amount: Micros) -> String {
    format!("{}.{:06}", amount / 1_000_000, amount % 1_000_000)
}

/// A calendar month in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Month {
    pub year: i32,
    /// 1-12.
    pub month: u32,
}

impl Month {
    /// The month holding the instant `unix_ms` (milliseconds since the Unix epoch, UTC).
    pub fn of_ms(unix_ms: u64) -> Result<Self, PricingError> {
        let at = i64::try_from(unix_ms)
            .ok()
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .ok_or(PricingError::TimeOutOfRange { unix_ms })?;
        Ok(Self { year: at.year(), month: at.month() })
    }

    /// The month's first millisecond.
    pub fn start_ms(self) -> Result<u64, PricingError> {
        let day = NaiveDate::from_ymd_opt(self.year, self.month, 1).ok_or(PricingError::InvalidMonth(self))?;
        let ms = day.and_hms_opt(0, 0, 0).ok_or(PricingError::InvalidMonth(self))?.and_utc().timestamp_millis();
        u64::try_from(ms).map_err(|_| PricingError::InvalidMonth(self))
    }

    /// The next month.
    pub fn next(self) -> Self {
        if self.month >= 12 {
            Self { year: self.year + 1, month: 1 }
        } else {
            Self { year: self.year, month: self.month + 1 }
        }
    }

    /// The month before.
    pub fn previous(self) -> Self {
        if self.month <= 1 {
            Self { year: self.year - 1, month: 12 }
        } else {
            Self { year: self.year, month: self.month - 1 }
        }
    }

    /// The first millisecond after the month.
    pub fn end_ms(self) -> Result<u64, PricingError> {
        self.next().start_ms()
    }
}

impl std::str::FromStr for Month {
    type Err = PricingError;

    /// `YYYY-MM`, as the month is displayed.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || PricingError::UnreadableMonth(text.chars().take(16).collect());
        let (year, month) = text.split_once('-').ok_or_else(bad)?;
        if year.len() != 4 || month.len() != 2 {
            return Err(bad());
        }
        let month = Self { year: year.parse().map_err(|_| bad())?, month: month.parse().map_err(|_| bad())? };
        if !(1..=12).contains(&month.month) {
            return Err(bad());
        }
        Ok(month)
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// How a tenant pays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Plan {
    /// Pay per call, after a monthly free tier.
    PayPerCall {
        /// Units free every month.
        free_units_per_month: u64,
        /// On-demand price of a million units.
        price_per_million_units: Micros,
    },
    /// Dedicated capacity at a flat monthly fee; calls are not priced.
    Dedicated { fee_per_month: Micros },
}

/// A prepaid package's balance: `remaining_units` to draw from for usage in hours starting in
/// `valid_from_ms..valid_until_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageBalance {
    pub package_id: String,
    pub remaining_units: u64,
    pub valid_from_ms: u64,
    pub valid_until_ms: u64,
}

impl PackageBalance {
    fn covers(&self, hour_start_ms: u64) -> bool {
        self.valid_from_ms <= hour_start_ms && hour_start_ms < self.valid_until_ms
    }
}

/// A tenant's billable units in one hour (all queues, sub-tenants and actions together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourUsage {
    /// The hour's first millisecond (a multiple of [`HOUR_MS`]).
    pub hour_start_ms: u64,
    pub units: u64,
}

/// Where a month's units went, and what they cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthRating {
    pub month: Month,
    pub total_units: u64,
    pub free_units: u64,
    /// Units drawn from each package, by package id.
    pub package_units: BTreeMap<String, u64>,
    pub on_demand_units: u64,
    pub lines: Vec<InvoiceLine>,
    pub total: Micros,
    /// Package balances after the month, in the order given.
    pub balances_after: Vec<PackageBalance>,
}

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    pub description: String,
    pub units: u64,
    pub amount: Micros,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    #[error("time {unix_ms} ms is out of the supported range")]
    TimeOutOfRange { unix_ms: u64 },
    #[error("{0} is not a valid month")]
    InvalidMonth(Month),
    #[error("'{0}' is not a month: expected YYYY-MM")]
    UnreadableMonth(String),
    #[error("usage hour {hour_start_ms} is not the start of an hour")]
    UnalignedHour { hour_start_ms: u64 },
    #[error("usage hour {hour_start_ms} is not in {month}")]
    HourOutsideMonth { hour_start_ms: u64, month: Month },
    #[error("usage hours must be given once each, in order (hour {hour_start_ms} is not)")]
    HoursOutOfOrder { hour_start_ms: u64 },
    #[error("the amount overflows")]
    Overflow,
}

/// The price of `units` at `price_per_million_units`, rounded to the nearest micro-unit (half up).
pub fn on_demand_amount(units: u64, price_per_million_units: Micros) -> Result<Micros, PricingError> {
    let micros = (u128::from(units) * u128::from(price_per_million_units) + 500_000) / 1_000_000;
    Micros::try_from(micros).map_err(|_| PricingError::Overflow)
}

/// Rates `month` of a tenant's usage (`hours`: ascending, each once, all inside the month)
/// against `plan` and the package balances at the month's start.
pub fn rate_month(
    plan: &Plan,
    month: Month,
    balances: &[PackageBalance],
    hours: &[HourUsage],
) -> Result<MonthRating, PricingError> {
    let (start_ms, end_ms) = (month.start_ms()?, month.end_ms()?);
    let mut previous = None;
    for hour in hours {
        let at = hour.hour_start_ms;
        if at % HOUR_MS != 0 {
            return Err(PricingError::UnalignedHour { hour_start_ms: at });
        }
        if at < start_ms || at >= end_ms {
            return Err(PricingError::HourOutsideMonth { hour_start_ms: at, month });
        }
        if previous.is_some_and(|p| p >= at) {
            return Err(PricingError::HoursOutOfOrder { hour_start_ms: at });
        }
        previous = Some(at);
    }
    let total_units = hours.iter().try_fold(0u64, |sum, h| sum.checked_add(h.units)).ok_or(PricingError::Overflow)?;
    let mut rating = MonthRating {
        month,
        total_units,
        free_units: 0,
        package_units: BTreeMap::new(),
        on_demand_units: 0,
        lines: Vec::new(),
        total: 0,
        balances_after: balances.to_vec(),
    };
    let (free_units_per_month, price_per_million_units) = match plan {
        Plan::Dedicated { fee_per_month } => {
            rating.lines.push(InvoiceLine {
                description: format!("dedicated capacity, {month}"),
                units: total_units,
                amount: *fee_per_month,
            });
            rating.total = *fee_per_month;
            return Ok(rating);
        }
        Plan::PayPerCall { free_units_per_month, price_per_million_units } => {
            (*free_units_per_month, *price_per_million_units)
        }
    };

    // Packages by the order they are drawn: the one expiring first, then by id.
    let mut order: Vec<usize> = (0..balances.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&balances[a], &balances[b]);
        (a.valid_until_ms, &a.package_id).cmp(&(b.valid_until_ms, &b.package_id))
    });
    let mut free_left = free_units_per_month;
    for hour in hours {
        let mut left = hour.units;
        let free = left.min(free_left);
        free_left -= free;
        rating.free_units += free;
        left -= free;
        for &i in &order {
            if left == 0 {
                break;
            }
            let package = &mut rating.balances_after[i];
            if !package.covers(hour.hour_start_ms) || package.remaining_units == 0 {
                continue;
            }
            let drawn = left.min(package.remaining_units);
            package.remaining_units -= drawn;
            left -= drawn;
            *rating.package_units.entry(package.package_id.clone()).or_default() += drawn;
        }
        rating.on_demand_units += left;
    }

    if rating.free_units > 0 {
        rating.lines.push(InvoiceLine {
            description: format!("free tier, {month}"),
            units: rating.free_units,
            amount: 0,
        });
    }
    for (package_id, &units) in &rating.package_units {
        rating.lines.push(InvoiceLine { description: format!("prepaid package {package_id}"), units, amount: 0 });
    }
    if rating.on_demand_units > 0 {
        let amount = on_demand_amount(rating.on_demand_units, price_per_million_units)?;
        rating.lines.push(InvoiceLine {
            description: format!("on-demand requests, {month}"),
            units: rating.on_demand_units,
            amount,
        });
        rating.total = amount;
    }
    Ok(rating)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// $0.40 per million requests, the first million each month free.
    fn standard() -> Plan {
        Plan::PayPerCall { free_units_per_month: 1_000_000, price_per_million_units: 400_000 }
    }

    fn month(year: i32, month: u32) -> Month {
        Month { year, month }
    }

    fn hour(month: Month, hour_of_month: u64, units: u64) -> HourUsage {
        HourUsage { hour_start_ms: month.start_ms().expect("valid month") + hour_of_month * HOUR_MS, units }
    }

    fn package(id: &str, units: u64, from: Month, until: Month) -> PackageBalance {
        PackageBalance {
            package_id: id.into(),
            remaining_units: units,
            valid_from_ms: from.start_ms().expect("valid month"),
            valid_until_ms: until.start_ms().expect("valid month"),
        }
    }

    #[test]
    fn months_parse_as_they_display() {
        let month: Month = "2026-02".parse().unwrap();
        assert_eq!(month, Month { year: 2026, month: 2 });
        assert_eq!(month.to_string(), "2026-02");
        for bad in ["2026-13", "2026-00", "26-01", "2026-1", "2026/01", "", "abcd-ef"] {
            assert!(bad.parse::<Month>().is_err(), "{bad}");
        }
    }

    #[test]
    fn units_are_started_64_kib_blocks_and_at_least_one() {
        assert_eq!(billable_units(0), 1);
        assert_eq!(billable_units(1), 1);
        assert_eq!(billable_units(65_536), 1);
        assert_eq!(billable_units(65_537), 2);
        assert_eq!(billable_units(256 * 1024), 4);
        assert_eq!(billable_units(256 * 1024 + 1), 5);
    }

    #[test]
    fn the_free_tier_ends_exactly_at_its_boundary_even_inside_an_hour() {
        let jan = month(2026, 1);
        let exactly = rate_month(&standard(), jan, &[], &[hour(jan, 0, 600_000), hour(jan, 5, 400_000)]).expect("rate");
        assert_eq!((exactly.free_units, exactly.on_demand_units, exactly.total), (1_000_000, 0, 0));

        // The second hour crosses the boundary: 400,000 free, 2,500 on demand ($0.001).
        let over = rate_month(&standard(), jan, &[], &[hour(jan, 0, 600_000), hour(jan, 5, 402_500)]).expect("rate");
        assert_eq!((over.free_units, over.on_demand_units), (1_000_000, 2_500));
        assert_eq!(over.total, 1_000);
        assert_eq!(over.lines.last().map(|l| (l.units, l.amount)), Some((2_500, 1_000)));
    }

    #[test]
    fn a_package_runs_out_mid_hour_and_the_rest_is_on_demand() {
        let jan = month(2026, 1);
        let plan = Plan::PayPerCall { free_units_per_month: 0, price_per_million_units: 400_000 };
        let balances = [package("p-1", 500_000, jan, month(2027, 1))];
        let rating =
            rate_month(&plan, jan, &balances, &[hour(jan, 1, 300_000), hour(jan, 2, 1_200_000)]).expect("rate");
        assert_eq!(rating.package_units, BTreeMap::from([("p-1".to_string(), 500_000)]));
        assert_eq!(rating.on_demand_units, 1_000_000);
        assert_eq!(rating.total, 400_000);
        assert_eq!(rating.balances_after[0].remaining_units, 0);
    }

    #[test]
    fn free_units_come_first_then_the_package_expiring_first_and_only_while_valid() {
        let (jan, feb, mar) = (month(2026, 1), month(2026, 2), month(2026, 3));
        let plan = Plan::PayPerCall { free_units_per_month: 100, price_per_million_units: 1_000_000 };
        // "late" expires after "early"; "future" is not valid yet in January.
        let balances =
            [package("late", 1_000, jan, mar), package("early", 50, jan, feb), package("future", 1_000, feb, mar)];
        let rating = rate_month(&plan, jan, &balances, &[hour(jan, 0, 100), hour(jan, 1, 300)]).expect("rate");
        assert_eq!(rating.free_units, 100);
        assert_eq!(rating.package_units, BTreeMap::from([("early".to_string(), 50), ("late".to_string(), 250)]));
        assert_eq!(rating.on_demand_units, 0);
        let remaining: Vec<u64> = rating.balances_after.iter().map(|b| b.remaining_units).collect();
        assert_eq!(remaining, [750, 0, 1_000]);

        // An expired package is not drawn: in March only on-demand is left (free tier used up).
        let rating = rate_month(&plan, mar, &rating.balances_after, &[hour(mar, 0, 150)]).expect("rate");
        assert_eq!((rating.free_units, rating.on_demand_units), (100, 50));
        assert!(rating.package_units.is_empty());
        assert_eq!(rating.total, 50);
    }

    #[test]
    fn months_are_utc_calendar_months_and_the_free_tier_resets_each() {
        let jan = month(2026, 1);
        let last_ms_of_january = month(2026, 2).start_ms().expect("feb") - 1;
        assert_eq!(Month::of_ms(last_ms_of_january).expect("month"), jan);
        assert_eq!(Month::of_ms(last_ms_of_january + 1).expect("month"), month(2026, 2));
        assert_eq!(month(2026, 12).next(), month(2027, 1));
        // A leap February has 29 days of hours.
        let feb_2028 = month(2028, 2);
        let hours_in = |m: Month| (m.end_ms().expect("end") - m.start_ms().expect("start")) / HOUR_MS;
        assert_eq!(hours_in(feb_2028), 29 * 24);
        assert_eq!(hours_in(month(2026, 2)), 28 * 24);
        assert_eq!(jan.to_string(), "2026-01");

        // The same usage in two months: each gets its own free million.
        let feb = month(2026, 2);
        let in_jan = rate_month(&standard(), jan, &[], &[hour(jan, 743, 1_500_000)]).expect("rate");
        let in_feb = rate_month(&standard(), feb, &[], &[hour(feb, 0, 1_500_000)]).expect("rate");
        assert_eq!(in_jan.total, in_feb.total);
        assert_eq!(in_jan.total, 200_000);
    }

    #[test]
    fn usage_outside_the_month_unaligned_or_out_of_order_is_refused() {
        let jan = month(2026, 1);
        let feb = month(2026, 2);
        let outside = rate_month(&standard(), jan, &[], &[hour(feb, 0, 1)]);
        assert!(matches!(outside, Err(PricingError::HourOutsideMonth { .. })), "{outside:?}");
        let unaligned = HourUsage { hour_start_ms: jan.start_ms().expect("jan") + 1, units: 1 };
        assert!(matches!(rate_month(&standard(), jan, &[], &[unaligned]), Err(PricingError::UnalignedHour { .. })));
        let twice = rate_month(&standard(), jan, &[], &[hour(jan, 3, 1), hour(jan, 3, 1)]);
        assert!(matches!(twice, Err(PricingError::HoursOutOfOrder { .. })), "{twice:?}");
        assert!(matches!(month(2026, 13).start_ms(), Err(PricingError::InvalidMonth(_))));
    }

    #[test]
    fn a_dedicated_plan_is_a_flat_fee_and_draws_nothing() {
        let jan = month(2026, 1);
        let plan = Plan::Dedicated { fee_per_month: 250_000_000 };
        let balances = [package("p", 10, jan, month(2026, 2))];
        let rating = rate_month(&plan, jan, &balances, &[hour(jan, 0, 5_000_000)]).expect("rate");
        assert_eq!(rating.total, 250_000_000);
        assert_eq!((rating.total_units, rating.free_units, rating.on_demand_units), (5_000_000, 0, 0));
        assert_eq!(rating.balances_after, balances);
    }

    #[test]
    fn on_demand_amounts_round_half_up_to_the_micro() {
        assert_eq!(on_demand_amount(1, 400_000).expect("amount"), 0); // 0.4 micro
        assert_eq!(on_demand_amount(2, 250_000).expect("amount"), 1); // 0.5 micro
        assert_eq!(on_demand_amount(1_000_000, 400_000).expect("amount"), 400_000);
        assert!(on_demand_amount(u64::MAX, u64::MAX).is_err());
    }

    proptest! {
        /// Every unit is accounted for once, balances never grow, and more usage never costs less.
        #[test]
        fn units_are_conserved_and_cost_is_monotone(
            units in proptest::collection::vec(0u64..2_000_000, 0..24),
            free in 0u64..3_000_000,
            package_units in 0u64..3_000_000,
            extra in 1u64..1_000_000,
        ) {
            let jan = month(2026, 1);
            let plan = Plan::PayPerCall { free_units_per_month: free, price_per_million_units: 400_000 };
            let balances = [package("p", package_units, jan, month(2026, 2))];
            let hours: Vec<HourUsage> = units.iter().enumerate().map(|(i, &u)| hour(jan, i as u64, u)).collect();
            let rating = rate_month(&plan, jan, &balances, &hours).expect("rate");
            let drawn: u64 = rating.package_units.values().sum();
            prop_assert_eq!(rating.free_units + drawn + rating.on_demand_units, rating.total_units);
            prop_assert_eq!(rating.balances_after[0].remaining_units, package_units - drawn);
            prop_assert!(rating.free_units <= free);

            let mut more = hours.clone();
            more.push(hour(jan, 100, extra));
            let costlier = rate_month(&plan, jan, &balances, &more).expect("rate");
            prop_assert!(costlier.total >= rating.total);
        }
    }
}
