import CPMLL

/// Nanosecond clocks read through the C helper (vDSO, no syscall).
package enum Clock {
    @inline(__always) package static var monotonicNanoseconds: Int64 { pmll_clock_monotonic_ns() }
    @inline(__always) package static var realtimeNanoseconds: Int64 { pmll_clock_realtime_ns() }
}
