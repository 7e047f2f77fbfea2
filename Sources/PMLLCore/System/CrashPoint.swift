public import CPMLL
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Crash injection for the crash suite: `PMLL_CRASH_AT=NAME[:N]` makes the process SIGKILL
/// itself at the N-th hit (default 1st) of the named point (`PMLL_PAUSE_AT` the same with
/// SIGSTOP, for tests); `PMLL_CRASH_TRACE=FILE` appends
/// the name of every point hit to FILE (to count them). Off, a hit is one load and one
/// predictable branch.
@usableFromInline
package enum CrashPoint {
    private static let armed = point(Knob.crashAt)
    private static let paused = point(Knob.pauseAt)
    private static let hits = Atomic<Int>(0)
    private static let pauseHits = Atomic<Int>(0)

    private static func point(_ knob: Knob) -> (name: String, hit: Int)? {
        guard let raw = knob.value, !raw.isEmpty else { return nil }
        let parts = raw.split(separator: ":", maxSplits: 1)
        return (String(parts[0]), parts.count == 2 ? Int(parts[1]) ?? 1 : 1)
    }
    private static let trace: Int32? = Knob.crashTrace.value.map { open($0, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600) }

    /// Every point compiled in, for enumeration by the crash suite.
    package static let all = [
        "pool.created", "lock.acquired", "lock.releasing",
        "queue.submitted", "queue.running", "queue.ended", "queue.end-barrier", "queue.finished", "queue.passed",
        "tx.conflict", "tx.undo-logged", "tx.applying", "tx.applied", "tx.committed", "tx.rolled-back",
        "tx.redo-logged", "tx.redo-durable", "redo.redone", "redo.index-durable", "redo.settled",
        "queue.recovered", "batch.staged", "batch.linked", "batch.renamed", "batch.committed",
        "audit.reserved", "audit.claimed", "audit.written",
        "growth.reserved", "growth.filled", "growth.logged", "growth.applied", "growth.committed",
    ]

    @inlinable @inline(__always)
    package static func hit(_ name: StaticString) {
        if pmll_crash_is_armed() != 0 { trigger(name) }
    }

    @usableFromInline @inline(never)
    static func trigger(_ name: StaticString) {
        if let trace, trace >= 0 { _ = "\(name)\n".withCString { write(trace, $0, strlen($0)) } }
        if let paused, "\(name)" == paused.name, pauseHits.add(1, ordering: .relaxed).newValue == paused.hit {
            // To this thread (raise is tgkill): it stops before it returns. Sent to the
            // process, the stop is begun by whichever thread the kernel picks (in an async
            // main, the idle main thread) and this one ran on until its next system call:
            // with the other core busy, through the commit to exit (seen in a test).
            raise(SIGSTOP)
        }
        guard let armed, "\(name)" == armed.name else { return }
        if hits.add(1, ordering: .relaxed).newValue == armed.hit { kill(getpid(), SIGKILL) }
    }
}

/// The crash-injection points compiled into the library, for tools that enumerate them.
public enum CrashInjection {
    public static var points: [String] { CrashPoint.all }
    /// Named persist sites that `PMLL_TEST_DROP_PERSIST` can remove (crash-suite self-test).
    public static let persistSites = ["tx.log", "tx.data", "tx.commit", "tx.rollback", "tx.rollback-done",
                                      "queue.record", "queue.head", "lock.entry", "pool.create",
                                      "growth.fill", "growth.directory", "growth.commit", "table.area",
                                      "tx.redo", "redo.checkpoint"]
}
