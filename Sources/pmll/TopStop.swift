import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// SIGTERM, SIGHUP and SIGINT end `pmll top` through its loop instead of in a signal handler,
/// so that the pool is released (its process slot freed) before the process exits. Ended in a
/// handler, the next process to open the pool found a dead process's slot to free, and audited
/// an `admin.reset`. (In the interactive view Ctrl-C is a key, not SIGINT.) A loop that does
/// not end within two seconds (stuck in a write) is ended as the handler did.
struct TopStop {
    private let state: State
    private let watches: [SignalWatch]

    /// The signal received, and a pipe that becomes readable then (for `poll`).
    final class State: Sendable {
        let received = Atomic<Int32>(0)
        let readEnd: Int32, writeEnd: Int32

        init() {
            var ends: [Int32] = [-1, -1]
            if pipe(&ends) == 0 {
                for fd in ends { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            }
            readEnd = ends[0]
            writeEnd = ends[1]
        }

        func note(_ signal: Int32) {
            guard received.compareExchange(expected: 0, desired: signal, ordering: .acquiringAndReleasing).exchanged else { return }
            var byte: UInt8 = 1
            _ = write(writeEnd, &byte, 1)
            // A loop stuck in a write (a stalled pipe, a terminal stopped with Ctrl-S) never
            // sees the signal: end then as the handler did before, slot left to the next attach.
            DispatchQueue.global().asyncAfter(deadline: .now() + .seconds(Self.graceSeconds)) { _exit(128 + signal) }
        }

        static let graceSeconds = 2

        deinit {
            if readEnd >= 0 { close(readEnd) }
            if writeEnd >= 0 { close(writeEnd) }
        }
    }

    init() {
        let state = State()
        self.state = state
        watches = [SIGTERM, SIGHUP, SIGINT].map { number in SignalWatch(number) { state.note(number) } }
    }

    /// The signal that asked top to end, if one did.
    var signal: Int32? {
        let number = state.received.load(ordering: .acquiring)
        return number == 0 ? nil : number
    }

    /// Descriptor for `poll`: readable once a signal came.
    var descriptor: Int32 { state.readEnd }

    /// Sleeps `seconds`, or less if a signal comes; true if one did.
    func sleep(seconds: Double) -> Bool {
        let end = TopScreen.now() + seconds
        while signal == nil {
            let left = end - TopScreen.now()
            if left <= 0 { return false }
            var fds = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            _ = poll(&fds, 1, Int32(left * 1000) + 1)
        }
        return true
    }
}
