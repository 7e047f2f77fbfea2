import CPMLL

/// Nanosecond clocks read through the C helper (vDSO, no syscall).
enum Clock {
    @inline(__always) static var monotonicNanoseconds: Int64 { pmll_clock_monotonic_ns() }
    @inline(__always) static var realtimeNanoseconds: Int64 { pmll_clock_realtime_ns() }
    /// Coarse wall clock (jiffy resolution) for "held since" stamps on the lock fast path.
    @inline(__always) static var coarseRealtimeNanoseconds: Int64 { pmll_clock_realtime_coarse_ns() }
}
