import Dispatch
import Synchronization
import PMLL
#if canImport(Glibc)
import Glibc
#endif

/// Holding a lock while COMMAND runs, for `pmll lock` and `pmll flock`: while the process
/// waits, SIGINT cancels the wait and a notice names the holder; neither is set up when the
/// lock is free (the common case in shell loops), so such a run starts no thread for them.
enum CommandHold {
    static func run(_ lock: LockHandle, shared: Bool, timeout: Duration?, _ body: (inout LockGrant) throws -> Int32) throws -> Int32 {
        // Ignored from before the lock is taken until we exit: a terminal's ^C goes to
        // COMMAND, and this process releases the lock when COMMAND has gone (marked if it
        // was killed). While waiting, the watch turns SIGINT into a cancellation instead.
        signal(SIGINT, SIG_IGN)
        let aids = WaitAids(lock: lock)
        let cancellation = Cancellation { [weak aids] cancellation in aids?.start(cancelling: cancellation) }
        defer { aids.stop() }
        let held = { (grant: inout LockGrant) throws -> Int32 in
            aids.stop()
            return try body(&grant)
        }
        return shared ? try lock.withSharedLock(timeout: timeout, cancellation: cancellation, held)
                      : try lock.withLock(timeout: timeout, cancellation: cancellation, held)
    }
}

/// What a waiting process runs beside the wait: the SIGINT watch and the holder notice.
/// Started by the lock's first wait, stopped when the lock is held or the wait ends. Their
/// handlers reach the lock only through a weak reference to this object, so a Dispatch source
/// that outlives its cancellation for a moment does not keep the pool open: the pool is
/// closed (its process slot freed) before the process exits.
private final class WaitAids: Sendable {
    private enum State {
        case idle
        case running(notice: WaitNotice, interrupt: SignalWatch)
        case stopped
    }

    private let lock: LockHandle
    private let state = Mutex(State.idle)

    init(lock: LockHandle) { self.lock = lock }

    func start(cancelling cancellation: Cancellation) {
        state.withLock { state in
            guard case .idle = state else { return }
            let interrupt = SignalWatch(SIGINT) { [weak self] in
                cancellation.cancel()
                self?.lock.wakeWaiters()
            }
            state = .running(notice: WaitNotice { [weak self] in self?.reportHolder() }, interrupt: interrupt)
        }
    }

    func stop() {
        state.withLock { state in
            if case .running(let notice, let interrupt) = state {
                notice.stop()
                interrupt.stop()
            }
            state = .stopped
        }
    }

    private func reportHolder() {
        // While we drain shared holders we own the word ourselves: name the readers then.
        if let holder = lock.currentHolder, holder.pid != getpid() {
            printError("pmll: waiting for lock '\(lock.id.name)' held by \(holder)")
        } else if let readers = Optional(lock.currentReaders), !readers.isEmpty {
            let names = readers.prefix(3).map(\.description).joined(separator: ", ") + (readers.count > 3 ? ", ..." : "")
            printError("pmll: waiting for lock '\(lock.id.name)' held shared by \(names)")
        }
    }
}

/// Calls `report`, after a moment of waiting and then every 10 s (to say who holds the lock).
/// Dispatch sources are thread-safe, hence @unchecked.
final class WaitNotice: @unchecked Sendable {
    private let timer: any DispatchSourceTimer
    init(report: @escaping @Sendable () -> Void) {
        timer = DispatchSource.makeTimerSource(queue: .global())
        timer.schedule(deadline: .now() + .milliseconds(500), repeating: .seconds(10))
        timer.setEventHandler(handler: report)
        timer.resume()
    }
    func stop() { timer.cancel() }
}

/// Runs a handler on a Dispatch queue when a signal arrives (the signal is ignored otherwise).
/// Dispatch sources are thread-safe, hence @unchecked.
final class SignalWatch: @unchecked Sendable {
    private let source: any DispatchSourceSignal
    private let number: Int32
    init(_ number: Int32, handler: @escaping @Sendable () -> Void) {
        self.number = number
        signal(number, SIG_IGN)
        source = DispatchSource.makeSignalSource(signal: number, queue: .global())
        source.setEventHandler(handler: handler)
        source.resume()
    }
    /// Leaves the signal ignored: while COMMAND runs it gets the terminal's SIGINT itself.
    func stop() { source.cancel() }
}
