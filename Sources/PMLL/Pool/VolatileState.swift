import CPMLL

/// Why the volatile part of a pool (lock words, process table) was reset on open.
public enum VolatileReset: String, Sendable, Codable {
    /// The pool was just created.
    case created
    /// No other process had the pool open; whatever it holds is left over from processes
    /// that are gone.
    case noOtherProcess = "no-other-process"
    /// The machine rebooted since the pool was last used (boot id changed).
    case reboot
}

/// Resetting lock words and process slots when nobody else can be using them. The caller
/// holds the INIT byte lock and the SESSION byte exclusively: no other process is attached.
enum VolatileState {
    static func stampBoot(_ header: UnsafeMutablePointer<pmll_header_t>, reason: UInt32) {
        writeFixedCString(ProcessIdentity.bootID(), into: &header.pointee.boot_id)
        header.pointee.last_reset_reason = reason
    }

    static func bootChanged(_ header: UnsafeMutablePointer<pmll_header_t>) -> Bool {
        String(fixedCString: header.pointee.boot_id) != ProcessIdentity.bootID()
    }

    /// Frees every lock. A lock that was held is left marked DIED, with its holder recorded,
    /// so that the next acquirer still learns that a critical section did not complete.
    static func reset(_ memory: PoolMemory, reason: VolatileReset) {
        let now = UInt64(Clock.realtimeNanoseconds)
        for index in 0..<memory.lockCapacity {
            let entry = memory.lock(index)
            let word = entry.pointee.word
            let owner = word & PMLL_OWNER_MASK
            var next = word & PMLL_WORD_DIED
            if owner != 0 && word & PMLL_WORD_HANDED == 0 {
                LockDeath.record(entry, owner: owner, memory: memory, detectedAt: now)
                entry.pointee.owner_deaths &+= 1
                next = PMLL_WORD_DIED
            }
            entry.pointee.word = entry.pointee.state == PMLL_ENTRY_READY ? next : 0
            entry.pointee.handoff_target = 0
        }
        for index in 0..<memory.processCapacity {
            let slot = memory.slot(index)
            slot.pointee.state = PMLL_SLOT_FREE
            _ = withUnsafeMutableBytes(of: &slot.pointee.waiting_on) { $0.initializeMemory(as: UInt8.self, repeating: 0) }
        }
        QueueRepair.reset(memory)
        let header = memory.header
        stampBoot(header, reason: reason == .reboot ? PMLL_RESET_REBOOT : PMLL_RESET_LAST_PROCESS_GONE)
        header.pointee.volatile_resets &+= 1
    }
}
