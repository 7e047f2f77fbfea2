import CPMLL

/// Nanosecond clocks read through the C helper (vDSO, no syscall).
enum Clock {
    @inline(__always) static var monotonicNanoseconds: Int64 { pmll_clock_monotonic_ns() }
    @inline(__always) static var realtimeNanoseconds: Int64 { pmll_clock_realtime_ns() }
}
