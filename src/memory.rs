//! What the machine can hold: a large allocation whose size is known in
//! advance (a model's parameter vector, its optimizer state) is checked
//! against the memory available, so that it fails with a message instead
//! of an out-of-memory abort.

/// Bytes of memory available for new allocations, where the platform says
/// (`MemAvailable` of `/proc/meminfo` on Linux); `None` elsewhere.
pub fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `bytes` as a short human figure: `9 bytes`, `64 KiB`, `512 MiB`,
/// `21.3 GiB`.
pub fn human(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / GIB),
        b if b >= 1 << 20 => format!("{} MiB", b.div_ceil(1 << 20)),
        b if b >= 1 << 10 => format!("{} KiB", b.div_ceil(1 << 10)),
        b => format!("{b} bytes"),
    }
}

/// Fails if `bytes` (for `what`) are more than the memory available.
///
/// # Examples
/// ```
/// assert!(tidemill::memory::check(1024, "a small vector").is_ok());
/// assert!(tidemill::memory::check(u64::MAX, "everything").is_err());
/// ```
pub fn check(bytes: u64, what: &str) -> Result<(), String> {
    let limit = available().unwrap_or(u64::MAX / 2);
    if bytes > limit {
        return Err(format!(
            "{what} need {}, more than the {} of memory available",
            human(bytes),
            human(limit)
        ));
    }
    Ok(())
}
