//! The fold: orderfold's rules as pure functions. It owns every decision DOMAIN.md states and
//! must never do I/O, read a clock or touch metrics: state and time come in as arguments, and
//! state changes, commands and outputs go out as values.

pub mod order;
pub mod sku;
pub mod tracking;

/// Why an event was counted and not applied. The labels are the metric's `kind` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ignored {
    OrderPlacedAgain,
    CaptureOnPaid,
    CaptureOnCancelled,
    FailureNotPending,
    CancelOnCancelled,
    CancelAfterShipping,
    ScanOutOfOrder,
    ScanAfterTerminal,
}

impl Ignored {
    pub const ALL: [Ignored; 8] = [
        Ignored::OrderPlacedAgain,
        Ignored::CaptureOnPaid,
        Ignored::CaptureOnCancelled,
        Ignored::FailureNotPending,
        Ignored::CancelOnCancelled,
        Ignored::CancelAfterShipping,
        Ignored::ScanOutOfOrder,
        Ignored::ScanAfterTerminal,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Ignored::OrderPlacedAgain => "order_placed_again",
            Ignored::CaptureOnPaid => "capture_on_paid",
            Ignored::CaptureOnCancelled => "capture_on_cancelled",
            Ignored::FailureNotPending => "failure_not_pending",
            Ignored::CancelOnCancelled => "cancel_on_cancelled",
            Ignored::CancelAfterShipping => "cancel_after_shipping",
            Ignored::ScanOutOfOrder => "scan_out_of_order",
            Ignored::ScanAfterTerminal => "scan_after_terminal",
        }
    }
}
