import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// SIGINT and SIGTERM to the supervisor stop the run early (workers stopped, recovery, the
/// final check, a partial summary) instead of killing it and leaving workers behind.
final class StopSignals: Sendable {
    private static let signal = Atomic<Int32>(0)

    /// The first stop signal received, if any.
    var received: Int32? {
        let s = Self.signal.load(ordering: .relaxed)
        return s == 0 ? nil : s
    }

    static func install() -> StopSignals {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { signal in
            _ = StopSignals.signal.compareExchange(expected: 0, desired: signal, ordering: .relaxed)
        }
        sigemptyset(&action.sa_mask)
        for s in [SIGINT, SIGTERM] { sigaction(s, &action, nil) }
        return StopSignals()
    }
}
