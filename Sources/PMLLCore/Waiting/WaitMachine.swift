import CPMLL
#if canImport(Glibc)
import Glibc
#endif

/// What one step of a wait found.
package enum WaitStep<Value> {
    case done(Value)
    case failed(PMLLError)
    /// Sleep while `word` still equals `expected`, until `until` (CLOCK_MONOTONIC ns) at the latest.
    case sleep(expected: UInt32, until: Int64)
}

/// A wait on a futex word in the pool, as a state machine that never blocks. The
/// synchronous paths sleep on the word between steps; async callers hand the machine to
/// the ``WaiterThread``, which sleeps on many machines' words at once.
package protocol WaitMachine: SendableMetatype {
    associatedtype Value: Sendable
    /// The word `.sleep` refers to.
    var word: UnsafeMutablePointer<UInt32> { get }
    /// Waits of one process with the same key are driven one at a time on the
    /// ``WaiterThread``, lowest order first (by default the word: a lock's waits).
    var queueKey: UnsafeMutablePointer<UInt32> { get }
    var deadline: Int64 { get }
    var cancellation: Cancellation? { get }
    /// Runs until done, failed, or it must sleep.
    mutating func advance() -> WaitStep<Value>
    /// After a sleep that `.sleep` asked for: whether it ended at its `until`.
    mutating func slept(timedOut: Bool, until: Int64)
    /// The error of a wait that ends (cancelled, or past its deadline) while still queued
    /// behind earlier waits of this process, before it ever ran a step.
    func failureWhileQueued(cancelled: Bool) -> PMLLError
    /// Called once when the wait is over, whatever the outcome.
    func end()
}

extension WaitMachine {
    /// Drives the machine on this thread, sleeping on the word between steps.
    package mutating func run() throws(PMLLError) -> Value {
        defer { end() }
        while true {
            switch advance() {
            case .done(let value): return value
            case .failed(let error): throw error
            case .sleep(let expected, let until):
                let rc = pmll_futex_wait(word, expected, until)
                slept(timedOut: rc == -ETIMEDOUT, until: until)
            }
        }
    }

    package func end() {}

    package var queueKey: UnsafeMutablePointer<UInt32> { word }
}
