package import CPMLL
package import PMLLCore

/// What a new holder learns about the holder before it, when that one did not finish.
public struct OwnerDeath: Equatable, Sendable, Codable, CustomStringConvertible {
    public enum Cause: String, Sendable, Codable {
        /// The holding process died (killed, crashed, exited, or closed the pool while holding).
        case processDied = "process-died"
        /// The holder released the lock marked inconsistent (e.g. `pmll lock`'s COMMAND was
        /// killed by a signal).
        case releasedInconsistent = "released-inconsistent"
    }
    public let cause: Cause
    /// PID of the previous holder in its own PID namespace (0 if unknown).
    public let pid: Int32
    public let commandName: String
    /// When the previous holder had taken the lock (ns since 1970, coarse).
    public let heldSinceNanoseconds: Int64
    /// When its death was detected (ns since 1970).
    public let detectedAtNanoseconds: Int64

    package init(cause: Cause, pid: Int32, commandName: String, heldSinceNanoseconds: Int64, detectedAtNanoseconds: Int64) {
        self.cause = cause
        self.pid = pid
        self.commandName = commandName
        self.heldSinceNanoseconds = heldSinceNanoseconds
        self.detectedAtNanoseconds = detectedAtNanoseconds
    }

    public var description: String {
        switch cause {
        case .processDied: "previous holder pid \(pid) (\(commandName)) died while holding the lock"
        case .releasedInconsistent: "previous holder pid \(pid) (\(commandName)) released the lock without finishing"
        }
    }
}

/// Recording and clearing owner deaths in lock entries.
package enum LockDeath {
    package static let causeDied: UInt32 = 0
    package static let causeInconsistent: UInt32 = 1

    /// Writes the death record of `owner` into the entry. Callers either hold the lock, or
    /// are about to free a word whose owner is certainly dead. `count`: the entry's death
    /// counter, if the caller made it while it waited (``PreparedTakeover``).
    package static func record(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>, owner: OwnerToken, memory: PoolMemory, detectedAt: UInt64,
                               cause: UInt32 = causeDied, count: Telemetry.OwnerDeathCount? = nil) {
        let slot = memory.slot(SlotIndex(owner.slot.rawValue % memory.processCapacity))
        let known = slot.pointee.generation == owner.generation
        entry.pointee.dead_pid = known ? slot.pointee.pid : 0
        entry.pointee.dead_comm = known ? slot.pointee.comm : entry.pointee.dead_comm
        if !known { writeFixedCString("?", into: &entry.pointee.dead_comm) }
        entry.pointee.dead_token = owner.rawValue
        entry.pointee.dead_since_ns = UInt64(bitPattern: HoldStamp.heldSince(entry))
        entry.pointee.dead_detected_ns = detectedAt
        entry.pointee.dead_cause = cause
        guard cause == causeDied else { return }
        if let count { count.increment() } else { Telemetry.ownerDeath(lock: String(fixedCString: entry.pointee.name)) }
    }

    package static func read(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>) -> OwnerDeath {
        OwnerDeath(
            cause: entry.pointee.dead_cause == causeInconsistent ? .releasedInconsistent : .processDied,
            pid: entry.pointee.dead_pid,
            commandName: String(fixedCString: entry.pointee.dead_comm),
            heldSinceNanoseconds: Int64(bitPattern: entry.pointee.dead_since_ns),
            detectedAtNanoseconds: Int64(bitPattern: entry.pointee.dead_detected_ns))
    }

    /// Frees every lock word owned by any generation of `deadSlot` (its process is gone and
    /// the slot is being reused), marking it DIED and waking its waiters. Also drops a
    /// handoff request the dead process left behind.
    package static func sweep(_ memory: PoolMemory, deadSlot: SlotIndex) {
        countReaderDeaths(memory, ReaderLedger.retire(memory.slot(deadSlot)))
        let now = UInt64(Clock.realtimeNanoseconds)
        for index in memory.locks {
            let entry = memory.lock(index)
            guard pmll_load32(pmll_entry_state(entry)) == PMLL_ENTRY_READY else { continue }
            var target = pmll_load32(pmll_entry_handoff(entry))
            if target != 0 && OwnerToken(rawValue: target).slot == deadSlot {
                _ = pmll_cas32(pmll_entry_handoff(entry), &target, 0)
            }
            while true {
                var word = pmll_load32(pmll_entry_word(entry))
                guard let owner = OwnerToken.owner(ofWord: word), owner.slot == deadSlot else { break }
                let handed = word & PMLL_WORD_NO_DEATH != 0   // never began its critical section
                if !handed { record(entry, owner: owner, memory: memory, detectedAt: now) }
                let sleepers = word & (PMLL_WORD_WAITERS | PMLL_WORD_READERS_WAITING)
                let next = sleepers | (handed ? word & PMLL_WORD_DIED : PMLL_WORD_DIED)
                if pmll_cas32(pmll_entry_word(entry), &word, next) != 0 {
                    if !handed { entry.pointee.owner_deaths &+= 1 }
                    if sleepers != 0 { _ = pmll_futex_wake(pmll_entry_word(entry), Int32.max) }
                    break
                }
            }
        }
    }

    /// Counts the shared holds a dead process left in its ledger (``ReaderLedger/retire(_:)``)
    /// as reader deaths of their locks. Every hold is counted once, by whoever retires the
    /// ledger: a writer that finds the process dead, the registrant that reuses its slot, or
    /// the reset when the last process left.
    package static func countReaderDeaths(_ memory: PoolMemory, _ held: [(lock: LockIndex, holds: Int)]) {
        guard !held.isEmpty else { return }
        _ = memory.lockExtents.learn()
        let known = memory.lockExtents.known
        for (lock, n) in held where lock.rawValue < known {
            pmll_add64(&pmll_entry_shared(memory.lock(lock)).pointee.reader_deaths, UInt64(n))
        }
    }
}
