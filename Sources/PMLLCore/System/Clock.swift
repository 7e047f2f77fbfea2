public import CPMLL
import Synchronization

/// Nanosecond clocks read through the C helper (vDSO, no syscall).
@usableFromInline
package enum Clock {
    @inlinable @inline(__always) package static var monotonicNanoseconds: Int64 { pmll_clock_monotonic_ns() }
    @inlinable @inline(__always) package static var realtimeNanoseconds: Int64 { pmll_clock_realtime_ns() }

    /// CLOCK_REALTIME at `monotonic`, a CLOCK_MONOTONIC reading the caller has just taken, from
    /// the two clocks' difference read at most ``offsetLifetime`` away from it. For a caller
    /// that timed its own work: a clock read through the vDSO is 24 ns on these machines, a
    /// fifth of what a commit's audit record cost its committer (Docs/Benchmarks.md).
    // The difference moves only when the wall clock is stepped (settimeofday, an NTP step) or
    // slewed (at most 500 ppm: 5 µs over the lifetime); a step shows in times derived here at
    // most one lifetime late. The two atomics may pair values of two refreshes: each is a
    // difference read within a lifetime of the other, so any pairing is as good.
    package static func realtime(atMonotonic monotonic: Int64) -> Int64 {
        let takenAt = offsetTakenAt.load(ordering: .acquiring)
        if takenAt != 0 && monotonic > takenAt &- offsetLifetime && monotonic < takenAt &+ offsetLifetime {
            return monotonic &+ offset.load(ordering: .relaxed)
        }
        let real = realtimeNanoseconds, now = monotonicNanoseconds
        offset.store(real &- now, ordering: .relaxed)
        offsetTakenAt.store(now, ordering: .releasing)
        return monotonic &+ (real &- now)
    }

    package static let offsetLifetime: Int64 = 10_000_000
    private static let offset = Atomic<Int64>(0)
    private static let offsetTakenAt = Atomic<Int64>(0)
}
