import CPMLL
import Synchronization
package import PMLLCore
import PMLLLocks

/// The store layer's per-pool state: the store's layout (read and validated once, when the
/// facade opens the pool) and the index of the store lock, created on first use.
package final class StoreService: Sendable {
    package let store: StateStore
    /// The store lock's index + 1 (0: not looked up yet; any thread may look it up, all
    /// find the same entry).
    let lockIndex = Atomic<UInt32>(0)
    /// Point reads left that go to their stripe first (``Pool/readConsistently(key:sharedSafe:_:)``):
    /// set when a read finds commits running in parallel, counted down by each read.
    let stripeReads = Atomic<Int>(0)
    static let stripeReadsAfterContention = 256
    /// The store lock's entry address (0: not looked up yet).
    let lockEntry = Atomic<UInt>(0)
    /// The stripe locks of parallel commits, created on first use (``Pool/storeStripes()``):
    /// a retained reference's bits, set once. Read by every parallel commit and stripe read,
    /// where `AtomicLazyReference.load()` (generic, and not specialised across modules) took
    /// 3 % of a durable commit's CPU (`perf`, 2026-12-06; Docs/Benchmarks.md).
    private let stripesReference = Atomic<UInt>(0)
    /// Set while a thread of this process commits in parallel: the process has one undo log,
    /// so a second thread's commit takes the store lock exclusively instead.
    let parallelLogBusy = Atomic<Bool>(false)
    /// Set once making a redo log failed for want of room (``Pool/prepareRedoLog(_:)``).
    let redoUnavailable = Atomic<Bool>(false)
    /// The pool's reset count + 1 when a read-only participant found no record owed since a
    /// restart (``Pool/redoOwedSinceRestart(_:)``): only a read-write opener can add records,
    /// and the first one after a restart resets the pool, which moves the count.
    let redoScannedClean = Atomic<UInt64>(0)
    /// A read-only participant's copy-on-write view of a redo log a restart left unsettled
    /// (``Pool/readOnlyView(_:)``).
    let redoOverlay = Mutex<RedoOverlay?>(nil)
    /// The sequence each log was last seen pending with, and when its owner was last asked
    /// about (``Pool/storeReady(probeAtOnce:)``).
    private let pendingSeen: Mutex<[(seq: UInt64, askedAt: Int64)]>
    /// How often the owner of one pending transaction is asked about at most: a committer
    /// preempted inside its commit stays pending for a time slice, and every transaction of
    /// every other process would ask meanwhile (51,000 system calls a second, measured).
    static let askInterval: Int64 = 50_000_000

    init(_ store: StateStore) {
        self.store = store
        pendingSeen = Mutex(Array(repeating: (0, 0), count: store.layout.logSlots))
    }

    deinit {
        let raw = stripesReference.load(ordering: .acquiring)
        if raw != 0 { Unmanaged<StoreStripes>.fromOpaque(UnsafeRawPointer(bitPattern: raw)!).release() }
    }

    /// The stripe locks, once known.
    var stripes: StoreStripes? {
        let raw = stripesReference.load(ordering: .acquiring)
        return raw == 0 ? nil : Unmanaged<StoreStripes>.fromOpaque(UnsafeRawPointer(bitPattern: raw)!).takeUnretainedValue()
    }

    /// Sets the stripe locks unless another thread did first; returns the ones set.
    func setStripes(_ stripes: StoreStripes) -> StoreStripes {
        let made = Unmanaged.passRetained(stripes)
        let (exchanged, original) = stripesReference.compareExchange(expected: 0, desired: UInt(bitPattern: made.toOpaque()), ordering: .acquiringAndReleasing)
        if exchanged { return stripes }
        made.release()
        return Unmanaged<StoreStripes>.fromOpaque(UnsafeRawPointer(bitPattern: original)!).takeUnretainedValue()
    }

    /// Whether to ask if the owner of log `log`, pending with `seq`, is alive: not at the
    /// first sight of that transaction, then at most once per ``askInterval``.
    func shouldAskOwner(log: Int, seq: UInt64) -> Bool {
        pendingSeen.withLock { seen in
            guard seen[log].seq == seq else {
                seen[log] = (seq, 0)
                return false
            }
            let now = Clock.monotonicNanoseconds
            guard now - seen[log].askedAt >= Self.askInterval else { return false }
            seen[log].askedAt = now
            return true
        }
    }
}

extension Pool {
    /// Reads the store's superblock and installs the store layer on this pool: the state
    /// store and the repair hook that rolls back a dead holder's transaction. Called by the
    /// facade while opening.
    package func attachStore() throws(PMLLError) {
        let layout = try StoreLayout.read(memory.base, heap: memory.layout.heap, path: path)
        let store = try StateStore(memory: memory, layout: layout, path: path)
        _ = services.get(.store) { StoreService(store) }
        hooks.repairAfterOwnerDeath.withLock { $0 = { pool throws(PMLLError) in try pool.storeReady() } }
        if store.exists && !isReadOnly {
            hooks.growTable.withLock { $0 = { pool, kind, k throws(PMLLError) in try pool.growTable(kind, k) } }
            // The store's own lock takes its entry at the pool's first open, before callers'
            // names can fill the table: with the table full at the size limit, `check` and
            // every transaction would find no entry for it. (The look for journals of dead
            // batches made it here until a new pool's census counted none.) A lookup after that.
            _ = try? storeLock(mayGrow: false)
        }
    }

    package var store: StateStore { services.withRequired(.store, as: StoreService.self) { $0.store } }
}
