// Arithmetic on values read from the shared mapping: another process, a corrupted file or a
// bit flip can put any value there, and a trapping `+` would kill the caller (a status
// command, or a CPM process linking the library). Statistics saturate; counters that take
// part in a protocol are validated where they are used (their callers say what is impossible).

extension UInt64 {
    /// `self + other`, or `UInt64.max` when that overflows.
    @inlinable package func saturatingAdd(_ other: UInt64) -> UInt64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}

extension Int64 {
    /// `self - other`, clamped to Int64's range.
    @inlinable package func saturatingSubtract(_ other: Int64) -> Int64 {
        let (difference, overflow) = subtractingReportingOverflow(other)
        return overflow ? (other < 0 ? .max : .min) : difference
    }
}
