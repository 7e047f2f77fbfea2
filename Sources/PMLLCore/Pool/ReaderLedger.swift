public import CPMLL

/// Which locks each process holds shared, in its process slot. A lock's reader count alone
/// cannot tell a writer whether its readers are alive; the ledger can, because the kernel
/// tells us which slots' processes live (their OFD liveness byte). Writers sum the ledger of
/// live processes and discount the rest of the count as holds of dead readers.
///
/// Order that makes the discount safe (never larger than the dead holds): a reader enters the
/// ledger before it counts itself in, and counts itself out before it leaves the ledger, so
/// a live reader is never counted without a ledger entry to show for it.
@usableFromInline package enum ReaderLedger {
    /// Words of the ledger: the dedicated ones, then the wait ledger's (shared with waits).
    @usableFromInline package static let words = PMLL_READ_LEDGER + PMLL_WAIT_LEDGER

    @inlinable @inline(__always) static func tag(_ lock: LockIndex) -> UInt32 {
        PMLL_LEDGER_READ | (lock.rawValue + 1) << PMLL_LEDGER_COUNT_BITS
    }

    @inlinable @inline(__always) static func isFree(_ v: UInt32) -> Bool { pmll_ledger_is_free(v) != 0 }

    /// Adds one hold of `lock` to this process's ledger, in a word its threads share; nil
    /// when every word is taken by other locks (or this lock's hold count is at its maximum).
    @inlinable @inline(__always)
    package static func enter(_ slot: UnsafeMutablePointer<pmll_process_slot_t>, lock: LockIndex) -> UInt32? {
        let tag = tag(lock)
        var free: UInt32? = nil
        for i in 0..<words {
            let p = pmll_slot_ledger(slot, i)
            var v = pmll_load32(p)
            // Not a word that one hold owns (PMLL_LEDGER_OWNED), nor a full one.
            while v & ~PMLL_LEDGER_COUNT_MASK == tag && v & PMLL_LEDGER_COUNT_MASK < PMLL_LEDGER_OWNED - 1 {
                // CAS, not add: a word at 0 holds may be re-tagged by a sibling thread meanwhile.
                if pmll_cas32_seq_cst(p, &v, v + 1) != 0 { return i }
            }
            if free == nil && isFree(v) { free = i }
        }
        var i = free ?? 0
        while i < words {
            let p = pmll_slot_ledger(slot, i)
            var v = pmll_load32(p)
            if isFree(v) {
                if pmll_cas32_seq_cst(p, &v, tag | 1) != 0 { return i }
                continue
            }
            i += 1
        }
        return nil
    }

    /// Removes one hold entered at word `i` by ``enter(_:lock:)``. Its tag cannot change while we hold.
    @inlinable @inline(__always)
    package static func leave(_ slot: UnsafeMutablePointer<pmll_process_slot_t>, word i: UInt32) {
        let p = pmll_slot_ledger(slot, i)
        var left = pmll_sub32(p, 1) - 1
        // A word borrowed from the wait ledger goes back as soon as it is idle.
        if i >= PMLL_READ_LEDGER && left & PMLL_LEDGER_COUNT_MASK == 0 { _ = pmll_cas32(p, &left, 0) }
    }

    /// One hold of `lock` in a word of its own (a biased hold), or nil if none is free. Only
    /// the last PMLL_LEDGER_OWNABLE words (of the wait ledger) are owned, so that at least
    /// `words - PMLL_LEDGER_OWNABLE` stay for shared words, one per lock. Sequentially
    /// consistent, as ``enter(_:lock:)``. In C, so that it inlines wherever it is called.
    @inlinable @inline(__always)
    package static func own(_ slot: UnsafeMutablePointer<pmll_process_slot_t>, lock: LockIndex) -> UInt32? {
        let i = pmll_ledger_own(slot, tag(lock))
        return i == UInt32.max ? nil : i
    }

    /// Gives an owned word back. Nobody else writes it while it is owned, so a plain store
    /// (release: the hold's reads come before it) is enough; no locked instruction.
    @inlinable @inline(__always)
    package static func disown(_ slot: UnsafeMutablePointer<pmll_process_slot_t>, word i: UInt32) {
        pmll_ledger_disown(slot, i)
    }

    /// Holds a ledger word records (an owned word is one).
    @inlinable @inline(__always)
    package static func holds(ofWord v: UInt32) -> Int {
        guard v & PMLL_LEDGER_READ != 0 else { return 0 }
        let n = v & PMLL_LEDGER_COUNT_MASK
        return n == PMLL_LEDGER_OWNED ? 1 : Int(n)
    }

    /// Shared holds of `lock` in one slot's ledger.
    package static func holds(_ slot: UnsafeMutablePointer<pmll_process_slot_t>, lock: LockIndex) -> Int {
        let tag = tag(lock)
        var n = 0
        for i in 0..<words {
            let v = pmll_load32(pmll_slot_ledger(slot, i))
            if v & ~PMLL_LEDGER_COUNT_MASK == tag { n += holds(ofWord: v) }
        }
        return n
    }

    /// True for a wait-ledger word that records a shared hold rather than a waiting thread.
    @inline(__always) package static func isRead(_ word: UInt32) -> Bool { word & PMLL_LEDGER_READ != 0 }

    package static func clear(_ slot: UnsafeMutablePointer<pmll_process_slot_t>) {
        // Only what is set: this runs over every slot at each lone attach (see storeIfChanged).
        withUnsafeMutableBytes(of: &slot.pointee.waiting_on) { zeroIfSet($0) }
        withUnsafeMutableBytes(of: &slot.pointee.reading) { zeroIfSet($0) }
        storeIfChanged(&slot.pointee.exit_word, 0)   // the previous occupant's: its process is gone
        storeIfChanged(&slot.pointee.robust_next, 0)
    }

    private static func zeroIfSet(_ bytes: UnsafeMutableRawBufferPointer) {
        if bytes.contains(where: { $0 != 0 }) { bytes.initializeMemory(as: UInt8.self, repeating: 0) }
    }
}

/// A process holding a lock shared, as the ledger and the process table record it.
public struct ReaderInfo: Equatable, Sendable, Codable, CustomStringConvertible {
    public let pid: Int32
    public let commandName: String
    /// Threads (or scopes) of that process holding the lock shared.
    public let holds: Int

    public var description: String { "pid \(pid) (\(commandName))" + (holds > 1 ? " ×\(holds)" : "") }
}

extension ProcessTable {
    /// The live processes holding `lock` shared, and the sum of their holds.
    package func readers(of lock: LockIndex) -> (holds: Int, readers: [ReaderInfo]) {
        let found = ledgers(of: lock)
        return (found.holds, found.readers)
    }

    /// As ``readers(of:)``, and the slots of dead processes whose ledgers still hold the lock.
    package func ledgers(of lock: LockIndex) -> (holds: Int, readers: [ReaderInfo], dead: [OwnerToken]) {
        var total = 0
        var readers: [ReaderInfo] = []
        var dead: [OwnerToken] = []
        for index in memory.slots {
            let slot = memory.slot(index)
            guard pmll_load32(pmll_slot_state(slot)) == PMLL_SLOT_ACTIVE else { continue }
            let n = ReaderLedger.holds(slot, lock: lock)
            guard n > 0 else { continue }
            let token = OwnerToken(slot: index, generation: pmll_load32(pmll_slot_generation(slot)))
            guard isAlive(token) else {
                dead.append(token)
                continue
            }
            total += n
            readers.append(ReaderInfo(pid: slot.pointee.pid, commandName: String(fixedCString: slot.pointee.comm), holds: n))
        }
        return (total, readers, dead)
    }

    /// Every lock held shared by live processes: holds and holders, by lock index (one pass).
    package func allReaders() -> [LockIndex: (holds: Int, readers: [ReaderInfo])] {
        var found: [LockIndex: (holds: Int, readers: [ReaderInfo])] = [:]
        for index in memory.slots {
            let slot = memory.slot(index)
            guard pmll_load32(pmll_slot_state(slot)) == PMLL_SLOT_ACTIVE else { continue }
            var mine: [LockIndex: Int] = [:]
            for i in 0..<ReaderLedger.words {
                let v = pmll_load32(pmll_slot_ledger(slot, i))
                guard let lock = ReaderLedger.lock(ofWord: v) else { continue }
                mine[lock, default: 0] += ReaderLedger.holds(ofWord: v)
            }
            guard !mine.isEmpty, isAlive(OwnerToken(slot: index, generation: pmll_load32(pmll_slot_generation(slot)))) else { continue }
            let pid = slot.pointee.pid, comm = String(fixedCString: slot.pointee.comm)
            for (lock, n) in mine {
                found[lock, default: (0, [])].holds += n
                found[lock, default: (0, [])].readers.append(ReaderInfo(pid: pid, commandName: comm, holds: n))
            }
        }
        return found
    }

    /// Takes the dead process's ledger out of the slot: every shared hold it left, by lock
    /// (counted as reader deaths by the caller, once: the words are zeroed). Holds the slot's
    /// liveness byte meanwhile, so the slot cannot be registered anew under us; nil if the
    /// byte is held (the process lives, or a registrant or another writer has the slot).
    package func retireLedger(of token: OwnerToken) -> [(lock: LockIndex, holds: Int)]? {
        guard token.slot != ownSlot, token.slot.rawValue < memory.processCapacity else { return nil }
        let byte = PMLL_LOCKBYTE_LIVENESS + Int64(token.slot.rawValue)
        guard pmll_ofd_lock(fd.rawValue, byte, PMLL_RANGE_EXCLUSIVE, 0) == 0 else { return nil }
        defer { _ = pmll_ofd_lock(fd.rawValue, byte, PMLL_RANGE_UNLOCK, 0) }
        let slot = memory.slot(token.slot)
        guard pmll_load32(pmll_slot_state(slot)) == PMLL_SLOT_ACTIVE,
              pmll_load32(pmll_slot_generation(slot)) == token.generation else { return nil }
        return ReaderLedger.retire(slot)
    }
}

extension ReaderLedger {
    /// The lock a ledger word holds shared, if it is a read word with holds.
    package static func lock(ofWord v: UInt32) -> LockIndex? {
        guard v & PMLL_LEDGER_READ != 0, v & PMLL_LEDGER_COUNT_MASK != 0 else { return nil }
        let tagged = (v & ~PMLL_LEDGER_READ) >> PMLL_LEDGER_COUNT_BITS
        return tagged > 0 ? LockIndex(tagged - 1) : nil
    }

    /// Zeroes every read word with holds in a dead process's slot; returns what they held.
    package static func retire(_ slot: UnsafeMutablePointer<pmll_process_slot_t>) -> [(lock: LockIndex, holds: Int)] {
        var held: [(lock: LockIndex, holds: Int)] = []
        for i in 0..<words {
            let p = pmll_slot_ledger(slot, i)
            let v = pmll_load32(p)
            guard let lock = lock(ofWord: v) else { continue }
            held.append((lock, holds(ofWord: v)))
            pmll_store32(p, 0)
        }
        return held
    }
}
