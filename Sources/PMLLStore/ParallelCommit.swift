import CPMLL
import PMLLCore
import PMLLLocks
import Synchronization

/// The stripe locks of a store: stripe `i mod count` guards key slot `i`'s record.
final class StoreStripes: Sendable {
    let locks: [LockIndex]

    init(_ locks: [LockIndex]) { self.locks = locks }

    func lock(forSlot i: UInt32) -> LockIndex { locks[Int(i) & (locks.count - 1)] }
}

/// Commits that run side by side (Docs/Transactions.md "Parallel commits").
///
/// The store lock has two modes. Held exclusively (every commit before this one, and still
/// every commit that inserts or removes a key, uses blocks, writes objects or validates a key
/// list; growths; rollbacks) it excludes everything. Held shared, it keeps those out while
/// many commits run at once, each holding the stripe locks of the key slots it reads and
/// writes. Such a commit only rewrites records in place inside slots that stay where they
/// are (a slot moves only in a growth, which is exclusive), so the key slots, their probe
/// chains, the block bitmap and the census do not change under it, and a slot's record
/// changes only under its stripe.
///
/// Each such commit uses its process's own undo log. A log is shared by the processes whose
/// process-table slots have the same remainder, so only the process whose slot number is
/// below the log count commits this way (the others commit exclusively, which excludes it).
///
/// A commit that dies holding stripes leaves them owned by a dead process. The next taker
/// of such a stripe is told (`ownerDied`), touches nothing, releases every stripe it took
/// (the died ones marked inconsistent, so their next takers are told too), and takes the
/// store lock exclusively: that rolls back every pending log (none can be a live one's
/// then), after which it takes and releases each died stripe to clear the mark.
extension Pool {
    /// Keys of one parallel commit: its undo log (the version entry, then an entry and a whole
    /// slot per key) must fit the log slot, whose overflow area only an exclusive growth makes
    /// (a growth under the shared lock would race another committer's for the same file
    /// space). 240 keys with 256-byte slots, 256 with 128-byte ones.
    static func parallelWritesMax(slotWidth: Int) -> Int {
        let entry = MemoryLayout<pmll_log_entry_t>.size
        return min(256, (slotEntryBytes - entry) / (entry + slotWidth))
    }

    /// How many stripes a pool's store has: a power of two, at most 64, a quarter of the lock
    /// table it was created with at most (a small table must keep room for the caller's
    /// locks). Derived from the created capacity, which never changes, so every process finds
    /// the same mapping from slot to stripe. Below 2, commits do not run in parallel.
    static func stripeCount(createdLockCapacity: Int) -> Int {
        var count = 64
        while count > 1 && count * 4 > createdLockCapacity { count /= 2 }
        return count >= 2 ? count : 0
    }

    /// The stripe locks, created on first use, outside any store lock (creating an entry may
    /// grow the lock table, which takes the store lock exclusively). Empty: none (a table too
    /// small, or full at its size limit).
    func storeStripes() throws(PMLLError) -> StoreStripes {
        if let known = services.withRequired(.store, as: StoreService.self, { $0.stripes }) { return known }
        let service = services.required(.store, as: StoreService.self)
        let count = Self.stripeCount(createdLockCapacity: memory.layout.lockCapacity)
        var locks: [LockIndex] = []
        do throws(PMLLError) {
            for s in 0..<count {
                guard let index = try table.index(of: "pmll:store/\(s)", level: .network, create: true, creation: tableCreation, allowReserved: true) else {
                    locks = []
                    break
                }
                locks.append(index)
            }
        } catch {
            switch error {
            case .poolFull, .sizeLimitReached: locks = []
            default: throw error
            }
        }
        return service.setStripes(StoreStripes(locks))
    }

    enum ParallelCommit {
        /// Done at this CLOCK_MONOTONIC time.
        case committed(Int64)
        /// Not a commit this path can make; the exclusive one makes it.
        case exclusive
        /// Stripes whose previous holder died: repair (``repairStripes(_:)``), then commit exclusively.
        case repair([LockIndex])
        /// The pool should have a redo log first (``Pool/prepareRedoLog(_:)``), then the commit tries again.
        case makeRedoLog
    }

    /// Commits `writes` holding the store lock shared and the stripes of the slots read and
    /// written, if every write replaces the value of a key that exists with a record that
    /// fits its slot, and the transaction listed no keys.
    func commitInParallel(_ writes: [(key: String, value: [UInt8]?)], reads: ReadSet?, store: StateStore, started: Int64) throws(PMLLError) -> ParallelCommit {
        guard writes.count <= Self.parallelWritesMax(slotWidth: store.layout.slotWidth), Int(slot.rawValue) < store.layout.logSlots,
              reads?.scans.isEmpty ?? true else { return .exclusive }
        // Sizes first, without building anything: most commits that cannot take this path
        // (a value in blocks, a removal) are told so here.
        let inlineMax = store.layout.inlineMax
        for (key, value) in writes {
            guard let value, key.utf8.count + value.count <= inlineMax, !key.utf8.starts(with: Self.objectPrefixBytes) else { return .exclusive }
        }
        let stripes = try storeStripes()
        guard !stripes.locks.isEmpty else { return .exclusive }
        let service = services.required(.store, as: StoreService.self)
        guard service.parallelLogBusy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return .exclusive }
        defer { service.parallelLogBusy.store(false, ordering: .releasing) }

        let shared = try acquireShared(index: storeLock(), deadline: .max, cancellation: nil)
        defer { releaseShared(shared) }
        // An exclusive holder died (or left the store inconsistent): what it wrote is guarded
        // by no stripe, and the next exclusive holder rolls it back.
        if shared.taken.ownerDied { return .repair([]) }
        // This process's own log still pending (a commit of its own failed after logging):
        // writing it again would lose that transaction's undo bytes.
        if isPending(ownLogHeader(store)) { return .repair([]) }
        // One view for the whole commit (each read of `store.view` is a lock and a retain):
        // the store lock held shared keeps growths out.
        let view = try store.refresh()
        var slots: [UInt32] = []
        slots.reserveCapacity(writes.count)
        for (key, _) in writes {
            guard let i = try store.find(key, in: view).found else { return .exclusive }
            slots.append(i)
        }
        // A commit that could go through a redo log, on a pool that has none yet: made first
        // (the exclusive lock; not for inserts, which never go this way).
        if try redoHeader(view) == nil && shouldMakeRedoLog(view) { return .makeRedoLog }
        var needed = slots.map { stripes.lock(forSlot: $0) }
        // Read keys that exist: their versions must not move until the commit point. An
        // absent key stays absent (an insertion is exclusive).
        if let reads {
            // Keys also written already have their stripe (the common read-modify-write).
            let written = writes.count > 8 ? Set(writes.map(\.key)) : nil
            for (key, _, _) in reads.versions where !(written?.contains(key) ?? writes.contains { $0.key == key }) {
                if let i = try store.find(key, in: view).found { needed.append(stripes.lock(forSlot: i)) }
            }
        }
        // Each stripe once, in order; the first `held` of them are held (no second array).
        needed.sort()
        var distinct = 0
        for n in needed.indices where n == 0 || needed[n] != needed[distinct - 1] {
            needed[distinct] = needed[n]
            distinct += 1
        }
        var held = 0, died: [LockIndex] = []
        var logged = false, committed = false
        defer {
            // A log written but not committed (an error in between) is rolled back by the
            // next exclusive holder; the stripes tell their next takers to get one.
            for index in needed[..<held].reversed() { release(index: index, inconsistent: died.contains(index) || (logged && !committed)) }
        }
        for n in 0..<distinct {
            let taken = try acquire(index: needed[n], deadline: .max, cancellation: nil)
            held += 1
            if taken.ownerDied { died.append(needed[n]) }
        }
        if !died.isEmpty { return .repair(died) }
        // A record changes only under its stripe: one stored in blocks frees them when
        // replaced, which changes the bitmap.
        guard slots.allSatisfy({ view.slot($0).pointee.block_count == 0 }) else { return .exclusive }

        let version = (try reads?.revalidate(store, pool: self, view: view) ?? store.commitSequence) &+ 1
        // On a disk, through the redo log when the pool has one (every process then does:
        // its records are what a settle redoes).
        if let redo = try redoHeader(view) {
            logged = true
            switch try commitThroughRedoLog(redo, store: store, view: view, slots: slots, writes: writes, version: version, started: started) {
            case .committed(let finished):
                committed = true
                return .committed(finished)
            case .full, .unsettled:
                logged = false
                return .exclusive
            }
        }
        let slotSize = view.slotWidth
        let ranges = slots.map { (offset: store.offset(of: view.slot($0)), length: slotSize) }
        // Fits its slot (``parallelWritesMax(slotWidth:)``): growing an overflow area needs the
        // store lock exclusively.
        let header = try writeUndoLog(store, ranges: ranges, keys: slots.count, slotVersion: version)
        logged = true
        CrashPoint.hit("tx.undo-logged")

        // In place: the state, the key and its hash stay as they are, so that a commit probing
        // past this slot for another key (under another stripe) reads the same chain.
        for (n, i) in slots.enumerated() {
            let s = view.slot(i)
            let data = StateStore.inlineRecord(s)
            let keyLength = writes[n].key.utf8.count, value = writes[n].value!
            value.withUnsafeBytes { data.advanced(by: keyLength).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            let end = keyLength + value.count
            (data + end).initializeMemory(as: UInt8.self, repeating: 0, count: view.inlineMax - end)
            s.pointee.value_length = UInt32(value.count)
            s.pointee.version = version
            s.pointee.checksum = StateStore.checksum(s, record: UnsafeRawBufferPointer(start: data, count: end))
        }
        CrashPoint.hit("tx.applying")
        try persist(ranges, site: "tx.data")
        CrashPoint.hit("tx.applied")

        // Durable from here: every slot holds its intact record of this version, which is
        // what recovery keeps a pending log of this kind for. So the commit point is written
        // without a barrier of its own; the next barrier over the log headers carries it.
        let finished = try commitPoint(header, started: started, durable: false)
        committed = true
        return .committed(finished)
    }

    /// After a stripe's holder died: the exclusive store lock rolls back what it left (every
    /// pending log is a dead one's while no one else holds the store lock), then each died
    /// stripe is taken and released consistent.
    func repairStripes(_ died: [LockIndex]) throws(PMLLError) {
        try withStoreLock { () throws(PMLLError) in
            for index in died {
                _ = try acquire(index: index, deadline: .max, cancellation: nil)
                release(index: index)
            }
        }
    }

    /// A point read of `key` under the store lock held shared and the stripe of its slot, so
    /// that it neither waits for nor stops commits of other stripes. nil: the caller reads
    /// another way (no stripes, or a stripe whose holder died: an exclusive holder repairs).
    func readUnderStripe<R>(_ key: String, store: StateStore, _ body: () throws(PMLLError) -> R) throws(PMLLError) -> R? {
        let stripes = try storeStripes()
        guard !stripes.locks.isEmpty else { return nil }
        let shared = try acquireShared(index: storeLock(), deadline: .max, cancellation: nil)
        defer { releaseShared(shared) }
        if shared.taken.ownerDied { return nil }
        let view = try store.refresh()
        // Absent stays absent while the store lock is held shared.
        guard let i = try store.find(key, in: view).found else { return try body() }
        let index = stripes.lock(forSlot: i)
        let taken = try acquire(index: index, deadline: .max, cancellation: nil)
        if taken.ownerDied {
            release(index: index, inconsistent: true)
            return nil
        }
        defer { release(index: index) }
        return try body()
    }
}
