import CPMLL
import HeapModule
import Synchronization
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The one thread per process that does every async wait of PMLL (lock acquisitions,
/// queue turns), so that awaiting never blocks a thread of Swift's cooperative pool or of
/// Dispatch (on Linux they share one small pool: blocking them deadlocks the holder that
/// should release; see Docs/Architecture.md).
///
/// It sleeps in one `futex_waitv(2)` on a process-private doorbell plus the pool word of
/// each wait it drives. Waits on the same word are driven one at a time in `order` (FIFO
/// arrival for locks, ticket order for queue turns): only the first can succeed, so the
/// others cost nothing until it is their turn. A wait queued behind another still ends
/// promptly when cancelled or past its deadline. Thread count stays 1 whatever the number
/// of waiters; with more than 127 distinct words at once the rest are polled every
/// millisecond, and on kernels before 5.16 (no futex_waitv) every word is polled so.
package final class WaiterThread: @unchecked Sendable {
    package static let shared = WaiterThread()

    private enum Message {
        case add(ParkedWait)
        case cancel(ParkedWait)
    }

    private let inbox = Mutex<[Message]>([])
    /// Rung (incremented and woken) whenever a message is posted.
    private let doorbell: UnsafeMutablePointer<UInt32>
    private let started = Atomic<Bool>(false)
    private let startLock = Mutex<Void>(())
    private let sequence = Atomic<UInt64>(0)

    // Owned by the thread.
    private var queues: [UnsafeMutablePointer<UInt32>: Heap<Queued>] = [:]
    /// The wait last driven on each word.
    private var heads: [UnsafeMutablePointer<UInt32>: ParkedWait] = [:]
    private var deadlines = Heap<Deadline>()
    private var vectoredWait = true

    private init() {
        doorbell = .allocate(capacity: 1)
        doorbell.initialize(to: 0)
    }

    /// Arrival order for waits that have no order of their own.
    package func nextOrder() -> UInt64 { sequence.add(1, ordering: .relaxed).newValue }

    /// Runs `machine` on the waiter thread and returns what it ends with. Task cancellation
    /// sets the machine's cancellation flag and wakes the thread.
    package func wait<M: WaitMachine>(_ machine: M, order: UInt64? = nil) async throws -> M.Value {
        try ensureStarted()
        let parked = Parked(machine, order: order ?? nextOrder())
        let cancellation = machine.cancellation
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<M.Value, any Error>) in
                parked.continuation = continuation
                post(.add(parked))
            }
        } onCancel: {
            cancellation?.cancel()
            post(.cancel(parked))
        }
    }

    private func post(_ message: Message) {
        inbox.withLock { $0.append(message) }
        _ = pmll_add32(doorbell, 1)
        _ = pmll_futex_wake_private(doorbell, 1)
    }

    /// Starts the thread on first use. A failure (the process is out of threads) is thrown
    /// to the waiter, and the next wait tries again.
    private func ensureStarted() throws(PMLLError) {
        if started.load(ordering: .acquiring) { return }
        try startLock.withLock { (_: inout Void) throws(PMLLError) in
            if started.load(ordering: .acquiring) { return }
            var thread = pthread_t()
            let context = Unmanaged.passRetained(self).toOpaque()
            let rc = pthread_create(&thread, nil, { context in
                pmll_thread_set_name("pmll-waiter")
                Unmanaged<WaiterThread>.fromOpaque(context!).takeUnretainedValue().loop()
            }, context)
            guard rc == 0 else {
                Unmanaged<WaiterThread>.fromOpaque(context).release()
                throw .systemCall(name: "pthread_create (PMLL's waiter thread)", errno: Errno(rawValue: rc))
            }
            pthread_detach(thread)
            started.store(true, ordering: .releasing)
        }
    }

    // MARK: the thread

    private func loop() -> Never {
        // Reused from round to round: a queue's turns wake this thread once per operation,
        // and a round that allocates costs more than the step it drives.
        var sleeping: [(wait: ParkedWait, until: Int64)] = []
        var words: [pmll_futex_waiter_t] = []
        var keys: [UnsafeMutablePointer<UInt32>] = []
        var messages: [Message] = []
        var lastBell = pmll_load32(doorbell) &- 1
        while true {
            // A message is appended before the bell rings: an unchanged bell means an empty inbox.
            let bell = pmll_load32(doorbell)
            if bell != lastBell {
                lastBell = bell
                inbox.withLock { swap(&$0, &messages) }
                for message in messages {
                    switch message {
                    case .add(let wait): add(wait)
                    case .cancel(let wait): if wait.state == .queued { finish(wait) { $0.abandon(cancelled: true) } }
                    }
                }
                messages.removeAll(keepingCapacity: true)
            }
            expireQueued(now: Clock.monotonicNanoseconds)

            sleeping.removeAll(keepingCapacity: true)
            words.removeAll(keepingCapacity: true)
            words.append(pmll_futex_waiter_t(word: doorbell, expected: bell, process_private: 1))
            var until = deadlines.min?.deadline ?? .max
            keys.removeAll(keepingCapacity: true)
            keys.append(contentsOf: queues.keys)
            for key in keys {
                guard let (wait, expected, wakeAt) = driveHead(of: key) else { continue }
                sleeping.append((wait, wakeAt))
                until = min(until, wakeAt)
                if vectoredWait && words.count < Int(PMLL_FUTEX_WAITV_MAX) {
                    words.append(pmll_futex_waiter_t(word: wait.word, expected: expected, process_private: 0))
                } else {
                    until = min(until, Clock.monotonicNanoseconds + 1_000_000)   // polled
                }
            }
            sleep(on: words, until: until)
            let now = Clock.monotonicNanoseconds
            for (wait, wakeAt) in sleeping where wait.state == .head {
                wait.slept(timedOut: now >= wakeAt, until: wakeAt)
            }
        }
    }

    private func sleep(on words: [pmll_futex_waiter_t], until: Int64) {
        let deadline = until == .max ? -1 : until
        if vectoredWait {
            let rc = words.withUnsafeBufferPointer { pmll_futex_waitv($0.baseAddress!, UInt32($0.count), deadline) }
            if rc != -ENOSYS { return }
            vectoredWait = false
        }
        // Without futex_waitv: sleep on the doorbell alone; pool words are polled.
        let polled = words.count > 1 ? min(deadline < 0 ? .max : deadline, Clock.monotonicNanoseconds + 1_000_000) : deadline
        _ = pmll_futex_wait_private(doorbell, words[0].expected, polled)
    }

    private func add(_ wait: ParkedWait) {
        wait.state = .queued
        if wait.cancellation?.isCancelled == true {
            finish(wait) { $0.abandon(cancelled: true) }
            return
        }
        queues[wait.key, default: Heap()].insert(Queued(order: wait.order, wait: wait))
        if wait.deadline != .max { deadlines.insert(Deadline(deadline: wait.deadline, wait: wait)) }
    }

    /// Ends queued (not yet driven) waits whose deadline has passed; a driven wait's own
    /// steps see its deadline.
    private func expireQueued(now: Int64) {
        while let first = deadlines.min, first.deadline <= now {
            _ = deadlines.popMin()
            if first.wait.state == .queued { finish(first.wait) { $0.abandon(cancelled: false) } }
        }
    }

    /// Steps the first live wait on `key`, and the next ones as each finishes. Returns what
    /// to sleep on, or nil when no wait on the key is left.
    private func driveHead(of key: UnsafeMutablePointer<UInt32>) -> (ParkedWait, UInt32, Int64)? {
        while let first = queues[key]?.min {
            let wait = first.wait
            if wait.state == .done {
                _ = queues[key]!.popMin()
                continue
            }
            // A queue turn of a lower ticket that arrived later displaces the wait driven so
            // far (lock waits arrive in order and never are): that one is queued again, so
            // that its cancellation and deadline are handled at once.
            if let previous = heads[key], previous !== wait, previous.state == .head { previous.state = .queued }
            heads[key] = wait
            wait.state = .head
            if let (expected, until) = wait.step() { return (wait, expected, until) }
            wait.state = .done
            _ = queues[key]!.popMin()
        }
        queues[key] = nil
        heads[key] = nil
        return nil
    }

    private func finish(_ wait: ParkedWait, _ end: (ParkedWait) -> Void) {
        wait.state = .done
        end(wait)
    }

    private struct Queued: Comparable {
        let order: UInt64
        let wait: ParkedWait
        static func < (a: Queued, b: Queued) -> Bool { a.order < b.order }
        static func == (a: Queued, b: Queued) -> Bool { a.order == b.order && a.wait === b.wait }
    }

    private struct Deadline: Comparable {
        let deadline: Int64
        let wait: ParkedWait
        static func < (a: Deadline, b: Deadline) -> Bool { a.deadline < b.deadline }
        static func == (a: Deadline, b: Deadline) -> Bool { a.deadline == b.deadline && a.wait === b.wait }
    }
}

/// A wait handed to the waiter thread, type-erased. Its state is the thread's alone.
package class ParkedWait: @unchecked Sendable {
    package enum State { case new, queued, head, done }
    /// Orders this process's waits (``WaitMachine/queueKey``).
    package let key: UnsafeMutablePointer<UInt32>
    /// What the wait sleeps on (``WaitMachine/word``).
    package let word: UnsafeMutablePointer<UInt32>
    package let order: UInt64
    package let deadline: Int64
    package let cancellation: Cancellation?
    package var state = State.new

    package init(key: UnsafeMutablePointer<UInt32>, word: UnsafeMutablePointer<UInt32>, order: UInt64, deadline: Int64, cancellation: Cancellation?) {
        self.key = key
        self.word = word
        self.order = order
        self.deadline = deadline
        self.cancellation = cancellation
    }

    /// One step; nil when the wait is over (its caller resumed), else what to sleep on.
    package func step() -> (expected: UInt32, until: Int64)? { fatalError("abstract") }
    package func slept(timedOut: Bool, until: Int64) { fatalError("abstract") }
    /// Ends a wait that never ran a step.
    package func abandon(cancelled: Bool) { fatalError("abstract") }
}

private final class Parked<M: WaitMachine>: ParkedWait, @unchecked Sendable {
    /// Dropped once the wait is over: the deadline heap may keep this object until the
    /// deadline passes, and the machine holds its pool (which stays attached while held).
    var machine: M?
    var continuation: CheckedContinuation<M.Value, any Error>?

    init(_ machine: M, order: UInt64) {
        self.machine = machine
        super.init(key: machine.queueKey, word: machine.word, order: order, deadline: machine.deadline, cancellation: machine.cancellation)
    }

    override func step() -> (expected: UInt32, until: Int64)? {
        switch machine!.advance() {
        case .done(let value):
            finish(.success(value))
        case .failed(let error):
            finish(.failure(error))
        case .sleep(let expected, let until):
            return (expected, until)
        }
        return nil
    }

    override func slept(timedOut: Bool, until: Int64) { machine?.slept(timedOut: timedOut, until: until) }

    override func abandon(cancelled: Bool) {
        finish(.failure(machine!.failureWhileQueued(cancelled: cancelled)))
    }

    private func finish(_ result: Result<M.Value, PMLLError>) {
        machine!.end()
        machine = nil
        continuation!.resume(with: result.mapError { $0 as any Error })
        continuation = nil
    }
}
