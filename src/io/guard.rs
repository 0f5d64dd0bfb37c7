//! A last line of defence around the third-party decoders that read
//! untrusted bytes (Arrow IPC, Parquet): a panic inside them — a bug of
//! theirs on malformed input, such as arrow-ipc slicing a buffer at an
//! offset read from the file without a bounds check — becomes an error
//! naming the input, instead of ending the process.
//!
//! The binary's panic hook asks [`in_untrusted`] and stays silent while a
//! guarded decode runs, so the panic unwinds to [`untrusted`] here.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// True while this thread runs a guarded decode.
pub fn in_untrusted() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Runs `f`, turning a panic inside it into `Err` with the panic's message.
/// The state `f` touched is abandoned with the input: callers stop reading
/// it.
///
/// # Examples
/// ```
/// use tidemill::io::guard::untrusted;
/// assert_eq!(untrusted(|| 2 + 2), Ok(4));
/// let e = untrusted(|| -> u8 { panic!("offset 99 beyond 10") }).unwrap_err();
/// assert!(e.contains("offset 99"));
/// ```
pub fn untrusted<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    DEPTH.with(|d| d.set(d.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(f));
    DEPTH.with(|d| d.set(d.get() - 1));
    result.map_err(|payload| {
        format!(
            "the decoder failed on malformed data ({})",
            panic_message(payload.as_ref())
        )
    })
}

/// The message a panic was raised with (`&str` or `String` payloads).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}
