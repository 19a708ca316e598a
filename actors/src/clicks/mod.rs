//! Click analytics: every redirect's click, described once off the hot path.
//!
//! - [`event`]: from what a redirect saw ([`event::RawClick`], copied without parsing) to
//!   the event that is stored ([`event::ClickEvent`]): id, truncated IP, device, browser,
//!   OS, bot flag, referer host, language, country.

pub mod event;
