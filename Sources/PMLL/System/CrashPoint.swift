import CPMLL
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Crash injection for the crash suite (issue 7): `PMLL_CRASH_AT=NAME[:N]` makes the process
/// SIGKILL itself at the N-th hit (default 1st) of the named point. Off, a hit is one load
/// and one predictable branch.
enum CrashPoint {
    private static let armed: (name: String, hit: Int)? = {
        guard let raw = getenv("PMLL_CRASH_AT").map({ String(cString: $0) }), !raw.isEmpty else { return nil }
        let parts = raw.split(separator: ":", maxSplits: 1)
        return (String(parts[0]), parts.count == 2 ? Int(parts[1]) ?? 1 : 1)
    }()
    private static let hits = Atomic<Int>(0)

    /// Every point compiled in, for enumeration by the crash suite.
    static let all = [
        "pool.created", "lock.acquired", "lock.releasing",
        "queue.submitted", "queue.running", "queue.finished",
        "tx.undo-logged", "tx.applied", "tx.committed", "tx.rolled-back",
    ]

    @inline(__always)
    static func hit(_ name: StaticString) {
        if pmll_crash_is_armed() != 0 { trigger(name) }
    }

    @inline(never)
    private static func trigger(_ name: StaticString) {
        guard let armed, "\(name)" == armed.name else { return }
        if hits.add(1, ordering: .relaxed).newValue == armed.hit { kill(getpid(), SIGKILL) }
    }
}
