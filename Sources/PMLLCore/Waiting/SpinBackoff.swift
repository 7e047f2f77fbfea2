import CPMLL

/// How a contended waiter spins before it sleeps: pauses that double each round (1, 2, 4 …
/// up to 64), with the word read once per round, for a bounded time.
///
/// Why back off: a waiter that reads the lock word at every pause keeps pulling its cache
/// line away from the holder, so every acquire and release of a holder that runs short
/// critical sections misses the cache, and the lock moves between processes at nearly every
/// release. Reading it less often lets the holder run its next sections with the line local,
/// which is where the throughput of a contended lock comes from (see Docs/Benchmarks.md,
/// "Contended exclusive: spinning that backs off").
///
/// Why bounded by time and not by rounds: a pause costs 27 ns on this project's AMD EPYC and
/// 3–140 cycles elsewhere; the budget is what costs CPU when the hold is long.
package struct SpinBackoff {
    /// Spinning time before the first sleep.
    package static let defaultBudgetNanoseconds: Int64 = 20_000
    /// The longest round: 2^8 = 256 pauses (about 7 µs here), the latest a free word is seen.
    /// Longer than 64 so that a waiter takes the holder's cache line less often, which made
    /// contended exclusive faster than glibc's robust mutex in more runs (Docs/Benchmarks.md
    /// "Waiters that look less often").
    static let longestRoundShift = 8

    private let until: Int64
    private var round = 0
    private var spent = false

    /// Spins until `start + budget` at most, never past `deadline`.
    package init(start: Int64, budget: Int64, deadline: Int64) {
        until = min(deadline, start &+ max(0, budget))
        spent = budget <= 0
    }

    /// One more round of pauses. False (and from then on) once the budget is spent: sleep.
    @inline(__always)
    package mutating func pause() -> Bool {
        if spent { return false }
        if Clock.monotonicNanoseconds >= until {
            spent = true
            return false
        }
        for _ in 0..<Self.pauses(inRound: round) { pmll_cpu_relax() }
        round += 1
        return true
    }

    /// Pauses in round `round` (from 0): doubling, then 64 each.
    @inline(__always)
    package static func pauses(inRound round: Int) -> Int { 1 << min(round, longestRoundShift) }

    /// Rounds spun so far.
    package var rounds: Int { round }
}
