public import CPMLL

/// Nanosecond clocks read through the C helper (vDSO, no syscall).
@usableFromInline
package enum Clock {
    @inlinable @inline(__always) package static var monotonicNanoseconds: Int64 { pmll_clock_monotonic_ns() }
    @inlinable @inline(__always) package static var realtimeNanoseconds: Int64 { pmll_clock_realtime_ns() }
}
