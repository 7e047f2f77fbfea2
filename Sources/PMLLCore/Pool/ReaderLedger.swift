package import CPMLL

/// Which locks each process holds shared, in its process slot. A lock's reader count alone
/// cannot tell a writer whether its readers are alive; the ledger can, because the kernel
/// tells us which slots' processes live (their OFD liveness byte). Writers sum the ledger of
/// live processes and discount the rest of the count as holds of dead readers.
///
/// Order that makes the discount safe (never larger than the dead holds): a reader enters the
/// ledger before it counts itself in, and counts itself out before it leaves the ledger, so
/// a live reader is never counted without a ledger entry to show for it.
package enum ReaderLedger {
    /// Words of the ledger: the dedicated ones, then the wait ledger's (shared with waits).
    @usableFromInline package static let words = PMLL_READ_LEDGER + PMLL_WAIT_LEDGER

    @inlinable @inline(__always) static func tag(_ lock: LockIndex) -> UInt32 {
        PMLL_LEDGER_READ | (lock.rawValue + 1) << PMLL_LEDGER_COUNT_BITS
    }

    /// Adds one hold of `lock` to this process's ledger; nil when every word is taken by
    /// other locks (or this lock's hold count is at its maximum).
    @inlinable @inline(__always)
    package static func enter(_ slot: UnsafeMutablePointer<pmll_process_slot_t>, lock: LockIndex) -> UInt32? {
        let tag = tag(lock)
        var free: UInt32? = nil
        for i in 0..<words {
            let p = pmll_slot_ledger(slot, i)
            var v = pmll_load32(p)
            while v & ~PMLL_LEDGER_COUNT_MASK == tag {
                // CAS, not add: a word at 0 holds may be re-tagged by a sibling thread meanwhile.
                guard v & PMLL_LEDGER_COUNT_MASK < PMLL_LEDGER_COUNT_MASK else { return nil }
                if pmll_cas32(p, &v, v + 1) != 0 { return i }
            }
            if free == nil && (v == 0 || (v & PMLL_LEDGER_READ != 0 && v & PMLL_LEDGER_COUNT_MASK == 0)) { free = i }
        }
        var i = free ?? 0
        while i < words {
            let p = pmll_slot_ledger(slot, i)
            var v = pmll_load32(p)
            if v == 0 || (v & PMLL_LEDGER_READ != 0 && v & PMLL_LEDGER_COUNT_MASK == 0) {
                if pmll_cas32(p, &v, tag | 1) != 0 { return i }
                continue
            }
            i += 1
        }
        return nil
    }

    /// Removes one hold entered at word `i`. Its tag cannot change while we hold.
    @inlinable @inline(__always)
    package static func leave(_ slot: UnsafeMutablePointer<pmll_process_slot_t>, word i: UInt32) {
        let p = pmll_slot_ledger(slot, i)
        var left = pmll_sub32(p, 1) - 1
        // A word borrowed from the wait ledger goes back as soon as it is idle.
        if i >= PMLL_READ_LEDGER && left & PMLL_LEDGER_COUNT_MASK == 0 { _ = pmll_cas32(p, &left, 0) }
    }

    /// The word holding `lock` in this process's ledger (for a release that did not keep it).
    package static func word(_ slot: UnsafeMutablePointer<pmll_process_slot_t>, lock: LockIndex) -> UInt32? {
        let tag = tag(lock)
        for i in 0..<words where pmll_load32(pmll_slot_ledger(slot, i)) & ~PMLL_LEDGER_COUNT_MASK == tag {
            return i
        }
        return nil
    }

    /// Shared holds of `lock` in one slot's ledger.
    package static func holds(_ slot: UnsafeMutablePointer<pmll_process_slot_t>, lock: LockIndex) -> Int {
        let tag = tag(lock)
        var n = 0
        for i in 0..<words {
            let v = pmll_load32(pmll_slot_ledger(slot, i))
            if v & ~PMLL_LEDGER_COUNT_MASK == tag { n += Int(v & PMLL_LEDGER_COUNT_MASK) }
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
        var total = 0
        var readers: [ReaderInfo] = []
        for index in memory.slots {
            let slot = memory.slot(index)
            guard pmll_load32(pmll_slot_state(slot)) == PMLL_SLOT_ACTIVE else { continue }
            let n = ReaderLedger.holds(slot, lock: lock)
            guard n > 0 else { continue }
            let token = OwnerToken(slot: index, generation: pmll_load32(pmll_slot_generation(slot)))
            guard isAlive(token) else { continue }
            total += n
            readers.append(ReaderInfo(pid: slot.pointee.pid, commandName: String(fixedCString: slot.pointee.comm), holds: n))
        }
        return (total, readers)
    }
}
