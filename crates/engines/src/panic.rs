//! What a caught panic said: engines and model readers that panic are caught and answered with
//! an error that carries the panic's message.

use std::any::Any;

/// The message of a caught panic (`panic!` with a literal or a formatted string), else empty.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}
