package import CPMLL
package import PMLLCore

/// What a takeover from one watched owner will record, made while the waiter waits for that
/// owner: the death counter and the audit record's text. A takeover runs right after the
/// waiter wakes, with that code and its data cold: there, building the text took about 14 µs
/// and finding the counter about 10 µs of a takeover of about 250 µs (timestamps in the
/// waiter, Docs/Benchmarks.md), where glibc's waiter has nothing left to do.
package struct PreparedTakeover {
    let owner: UInt32
    let pid: Int32
    let comm: [UInt8]
    package let count: Telemetry.OwnerDeathCount
    let text: String

    /// The text, if the entry's death record is the one it was made for: this owner's death,
    /// with the pid and command its slot held (a slot that moved on records "?" instead).
    package func text(for entry: UnsafeMutablePointer<pmll_lock_entry_t>) -> String? {
        guard entry.pointee.dead_token == owner, entry.pointee.dead_cause == LockDeath.causeDied, entry.pointee.dead_pid == pid,
              withUnsafeBytes(of: entry.pointee.dead_comm, { $0.elementsEqual(comm) }) else { return nil }
        return text
    }
}

extension Pool {
    /// The takeover of `entry` from `owner` (alive now), as ``LockDeath/record`` and
    /// ``auditTakeover(_:shared:prepared:)`` would make it; nil if the owner's slot moved on.
    /// Made once per watched owner, while waiting; the first making in a process also does
    /// the runtime's first look-ups for the types the text formats (about 50 µs, measured).
    package func prepareTakeover(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>, owner: UInt32, shared: Bool) -> PreparedTakeover? {
        let token = OwnerToken(rawValue: owner)
        let slot = memory.slot(SlotIndex(token.slot.rawValue % memory.processCapacity))
        let pid = slot.pointee.pid
        let comm = withUnsafeBytes(of: slot.pointee.comm) { Array($0) }
        guard pmll_load32(pmll_slot_generation(slot)) == token.generation else { return nil }
        prepareAuditAppend()
        let death = OwnerDeath(cause: .processDied, pid: pid, commandName: String(fixedCString: slot.pointee.comm),
                               heldSinceNanoseconds: 0, detectedAtNanoseconds: 0)
        return PreparedTakeover(owner: owner, pid: pid, comm: comm,
                                count: Telemetry.preparedOwnerDeath(lock: String(fixedCString: entry.pointee.name)),
                                text: Self.takeoverText(entry, death: death, shared: shared))
    }
}
