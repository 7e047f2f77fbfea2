import CPMLL
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A thread of this process that drains the audit ring while the process works, so that the
/// operations that append records do not also format, hash and write them. Started by the
/// first append that finds the ring a quarter full (a short-lived command never gets there:
/// it drains when it closes the pool); stopped, and joined, when the pool closes.
// The thread holds no reference to the Pool (its last release must never happen there): only
// the drain's values (the mapping outlives the thread: Pool.deinit joins it before unmapping)
// and the gate it shares with the pool's own drains.
// @unchecked: `wake` is a futex word, accessed only through atomics and futex calls; `thread`
// is written once, under `starting`, before `state` says running, and read after.
package final class AuditDrainer: @unchecked Sendable {
    private let wake = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    private let stopRequested = Atomic<Bool>(false)
    /// notStarted, running, or failed (pthread_create refused: appenders drain themselves).
    private let state = Atomic<UInt8>(0)   // notStarted
    private let kernelThreadID = Atomic<Int32>(0)
    private let starting = Mutex<Void>(())
    private var thread = pthread_t()
    private static let notStarted: UInt8 = 0, running: UInt8 = 1, failed: UInt8 = 2
    /// `wake`: asleep until kicked, awake (appenders do not kick), or napping (they kick only
    /// when the ring is half full).
    private static let asleep: UInt32 = 0, awake: UInt32 = 1, napping: UInt32 = 2
    static let napNanoseconds: Int64 = 200_000
    /// What `top -H` and /proc/PID/task/TID/comm show for the thread.
    package static let threadName = "pmll-audit"
    /// The thread's kernel id once it runs (a process with several pools has several threads
    /// of that name), else nil.
    package var threadID: Int32? {
        let id = kernelThreadID.load(ordering: .acquiring)
        return id == 0 ? nil : id
    }

    package init() { wake.initialize(to: 0) }

    /// Wakes the thread, starting it the first time with the drain `makeDrain` gives; false if
    /// it does not run (it could not be started). A napping thread is woken only when `urgent`.
    func kick(_ makeDrain: () -> AuditDrain?, gate: AuditGate, urgent: Bool) -> Bool {
        switch state.load(ordering: .acquiring) {
        case Self.running: break
        case Self.failed: return false
        default:
            guard start(makeDrain, gate: gate) else { return false }
        }
        // Awake already (the usual case while it drains): no locked instruction on its line.
        var seen = pmll_load32(wake)
        if seen == Self.awake || (seen == Self.napping && !urgent) { return true }
        guard pmll_cas32(wake, &seen, Self.awake) != 0 else { return true }
        _ = pmll_futex_wake_private(wake, 1)
        return true
    }

    private func start(_ makeDrain: () -> AuditDrain?, gate: AuditGate) -> Bool {
        starting.withLock { _ in
            guard state.load(ordering: .acquiring) == Self.notStarted else { return state.load(ordering: .acquiring) == Self.running }
            guard let drain = makeDrain() else {
                state.store(Self.failed, ordering: .releasing)
                return false
            }
            let context = Unmanaged.passRetained(Context(drainer: self, drain: drain, gate: gate)).toOpaque()
            let rc = pthread_create(&thread, nil, { raw in
                let context = Unmanaged<Context>.fromOpaque(raw!).takeRetainedValue()
                context.drainer.loop(context.drain, context.gate)
                return nil
            }, context)
            guard rc == 0 else {
                Unmanaged<Context>.fromOpaque(context).release()
                state.store(Self.failed, ordering: .releasing)
                return false
            }
            state.store(Self.running, ordering: .releasing)
            return true
        }
    }

    private final class Context {
        let drainer: AuditDrainer
        let drain: AuditDrain
        let gate: AuditGate
        init(drainer: AuditDrainer, drain: AuditDrain, gate: AuditGate) {
            self.drainer = drainer
            self.drain = drain
            self.gate = gate
        }
    }

    deinit { wake.deallocate() }

    /// Ends the thread, if it runs, and waits for it (a drain in progress finishes first).
    func stop() {
        let wasRunning = starting.withLock { _ -> Bool in
            let running = state.load(ordering: .acquiring) == Self.running
            state.store(Self.failed, ordering: .releasing)   // no start after this
            return running
        }
        guard wasRunning else { return }
        stopRequested.store(true, ordering: .sequentiallyConsistent)
        pmll_store32(wake, Self.awake)
        _ = pmll_futex_wake_private(wake, 1)
        pthread_join(thread, nil)
    }

    private func loop(_ drain: AuditDrain, _ gate: AuditGate) {
        pmll_thread_set_name(Self.threadName)
        kernelThreadID.store(pmll_thread_id(), ordering: .releasing)
        while !stopRequested.load(ordering: .sequentiallyConsistent) {
            // Awake: appenders do not need to kick, so they make no system call.
            pmll_store32(wake, Self.awake)
            var moved = 0, busy = drain.ring.drainingElsewhere
            if drain.ring.backlog > 0 && !busy {
                do {
                    moved = try gate.run(wait: false) { (session) throws(PMLLError) in try drain.drain(until: 0, session: &session) } ?? 0
                    // Nothing moved: taken elsewhere only if another drainer's hint says so
                    // (else the backlog is records still being written: wait as usual).
                    busy = moved == 0 && drain.ring.drainingElsewhere
                } catch {
                    Pool.logger.warning("could not drain the audit ring", metadata: ["path": "\(drain.poolPath)", "error": "\(error)"])
                }
            }
            if busy {
                // Another process (or thread) drains now, our records too. Staying awake for
                // a moment keeps this process's appenders from kicking: each kick woke this
                // thread only to find the drain taken again (with 4 processes committing,
                // 15,000 wake-ups and 18,000 lock attempts a second, measured).
                usleep(2000)
                continue
            }
            // What arrived while draining is taken now, not after the next kick.
            if moved > 0 && drain.ring.backlog >= drain.ring.count / 4 { continue }
            if moved >= Int(drain.ring.count / 8) {
                // Records are coming fast: nap, so that the appenders do not kick at a quarter. A
                // kick is a futex wake the appender makes (and a cross-CPU interrupt under a
                // hypervisor): 1.5 % of a process appending a record a microsecond, measured,
                // where a timer on this thread's own CPU costs it nothing. A nap can last far
                // longer than asked (a halted virtual CPU), so at half full they kick anyway,
                // well before three quarters, where an appender drains itself. Records that
                // come slowly (a disk's commits) wait for a kick at a quarter, as before: a nap
                // then drained one or two at a time, each drain a write and a barrier (ext4:
                // +12 % per commit instead of none). Once a nap finds too few, the thread
                // sleeps until kicked, as an idle process should.
                pmll_store32(wake, Self.napping)
                _ = pmll_futex_wait_private(wake, Self.napping, Clock.monotonicNanoseconds + Self.napNanoseconds)
                continue
            }
            pmll_store32(wake, Self.asleep)
            // Woken by an appender, or every 100 ms (another process may hold the drain).
            _ = pmll_futex_wait_private(wake, Self.asleep, Clock.monotonicNanoseconds + 100_000_000)
        }
    }
}

/// One drainer among a process's threads for one pool (they share its descriptor, so the
/// AUDIT byte lock does not exclude them from each other), and what its drains keep between
/// them (``AuditDrainSession``).
package final class AuditGate: Sendable {
    private let mutex = Mutex<AuditDrainSession>(AuditDrainSession())
    package init() {}

    /// nil: another thread drains (and `wait` is false).
    package func run(wait: Bool, _ body: (inout AuditDrainSession) throws(PMLLError) -> Int?) throws(PMLLError) -> Int? {
        if wait { return try mutex.withLock { (session) throws(PMLLError) in try body(&session) } }
        return try mutex.withLockIfAvailable { (session) throws(PMLLError) in try body(&session) } ?? nil
    }
}
