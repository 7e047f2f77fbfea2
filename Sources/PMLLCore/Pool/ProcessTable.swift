import CPMLL
package import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Who holds or held a lock: what the process table recorded about it.
public struct HolderInfo: Equatable, Sendable, Codable, CustomStringConvertible {
    /// PID in the holder's own PID namespace.
    public let pid: Int32
    public let commandName: String
    /// Wall-clock time the holder took the lock (nanoseconds since 1970, coarse).
    public let heldSinceNanoseconds: Int64

    /// One of the processes holding the lock shared (then `heldSinceNanoseconds` is 0: shared
    /// holds are not timed).
    public var shared = false

    public var description: String { (shared ? "shared holder " : "") + "pid \(pid) (\(commandName))" }

    package init(pid: Int32, commandName: String, heldSinceNanoseconds: Int64, shared: Bool = false) {
        self.pid = pid
        self.commandName = commandName
        self.heldSinceNanoseconds = heldSinceNanoseconds
        self.shared = shared
    }
}

/// The process table: one slot per attached process. Each process holds an OFD write
/// lock on its slot's liveness byte for as long as it lives; the kernel drops that lock
/// the instant the process dies, in any PID namespace, so a probe of the byte tells
/// life from death without trusting a PID. Slot identity is slot + generation.
package struct ProcessTable {
    package let memory: PoolMemory
    package let fd: FileDescriptor
    /// This process's own slot: our own OFD lock never conflicts with our probe of it.
    package var ownSlot = SlotIndex(.max)

    /// Claims a free or dead slot. Called under the INIT byte lock, so registrations never race.
    package func register(label: String?, reclaim: (PoolMemory, SlotIndex) -> Void) throws(PMLLError) -> (slot: SlotIndex, token: OwnerToken) {
        let pid = getpid()
        let comm = label ?? ProcessIdentity.commandName()
        let start = ProcessIdentity.startTime()
        for index in memory.slots {
            let rc = pmll_ofd_lock(fd.rawValue, PMLL_LOCKBYTE_LIVENESS + Int64(index.rawValue), PMLL_RANGE_EXCLUSIVE, 0)
            if rc == -EAGAIN { continue }   // a live process owns it
            try SystemCall.check("fcntl(F_OFD_SETLK)", rc)
            let slot = memory.slot(index)
            // Whatever the previous occupant held, it will never release.
            reclaim(memory, index)
            let generation = slot.pointee.generation % PMLL_MAX_GENERATION + 1
            slot.pointee.pid = pid
            slot.pointee.uid = ProcessIdentity.effectiveUID
            slot.pointee.start_time = start
            slot.pointee.registered_at_ns = UInt64(Clock.realtimeNanoseconds)
            writeFixedCString(comm, into: &slot.pointee.comm)
            ReaderLedger.clear(slot)
            pmll_store32(pmll_slot_generation(slot), generation)
            pmll_store32(pmll_slot_state(slot), PMLL_SLOT_ACTIVE)
            // Best effort: without it, waiters learn of our death from the OFD byte alone.
            _ = pmll_exit_watch_attach(slot)
            return (index, OwnerToken(slot: index, generation: generation))
        }
        throw .poolFull(table: "process", capacity: Int(memory.processCapacity))
    }

    package func unregister(slot index: SlotIndex) {
        // Off the exit-watch thread's robust list before the mapping can go away.
        pmll_exit_watch_detach(memory.slot(index))
        pmll_store32(pmll_slot_state(memory.slot(index)), PMLL_SLOT_FREE)
        _ = pmll_ofd_lock(fd.rawValue, PMLL_LOCKBYTE_LIVENESS + Int64(index.rawValue), PMLL_RANGE_UNLOCK, 0)
    }

    /// True unless the token's process is certainly gone: its slot was freed or reused, or
    /// nobody holds the slot's liveness byte.
    package func isAlive(_ token: OwnerToken) -> Bool {
        let index = token.slot
        guard index.rawValue < memory.processCapacity else { return false }
        let slot = memory.slot(index)
        guard pmll_load32(pmll_slot_state(slot)) == PMLL_SLOT_ACTIVE,
              pmll_load32(pmll_slot_generation(slot)) == token.generation else { return false }
        if index == ownSlot { return true }
        let probe = pmll_ofd_probe(fd.rawValue, PMLL_LOCKBYTE_LIVENESS + Int64(index.rawValue), PMLL_RANGE_EXCLUSIVE)
        // A failed probe must not be mistaken for a death: assume alive and probe again later.
        return probe != 0
    }

    /// Recorded identity of the token's process, or nil if the slot has moved on.
    package func info(of token: OwnerToken, heldSince: Int64) -> HolderInfo? {
        let index = token.slot
        guard index.rawValue < memory.processCapacity else { return nil }
        let slot = memory.slot(index)
        let pid = slot.pointee.pid
        let comm = String(fixedCString: slot.pointee.comm)
        guard pmll_load32(pmll_slot_generation(slot)) == token.generation else { return nil }
        return HolderInfo(pid: pid, commandName: comm, heldSinceNanoseconds: heldSince)
    }

    /// The exit word of the token's slot (see deathwatch.c), or nil if the slot has moved on.
    package func exitWord(of token: OwnerToken) -> UnsafeMutablePointer<UInt32>? {
        guard token.slot.rawValue < memory.processCapacity else { return nil }
        let slot = memory.slot(token.slot)
        guard pmll_load32(pmll_slot_generation(slot)) == token.generation else { return nil }
        return pmll_slot_exit_word(slot)
    }

    /// PID and start time the token's process registered with, or nil if the slot has moved on.
    package func identity(of token: OwnerToken) -> (pid: Int32, startTime: UInt64)? {
        let index = token.slot
        guard index.rawValue < memory.processCapacity else { return nil }
        let slot = memory.slot(index)
        let pid = slot.pointee.pid, start = slot.pointee.start_time
        guard pmll_load32(pmll_slot_state(slot)) == PMLL_SLOT_ACTIVE,
              pmll_load32(pmll_slot_generation(slot)) == token.generation else { return nil }
        return (pid, start)
    }

    /// Registers a waiting thread in this process's ledger (for the waiter counts that
    /// `status` shows); returns the ledger index or nil when all are busy.
    package func noteWaiting(slot index: SlotIndex, lock: LockIndex) -> UInt32? {
        let slot = memory.slot(index)
        for i in 0..<PMLL_WAIT_LEDGER {
            var expected: UInt32 = 0
            if pmll_cas32(pmll_slot_wait(slot, i), &expected, lock.rawValue + 1) != 0 { return i }
        }
        return nil
    }

    package func doneWaiting(slot index: SlotIndex, ledger: UInt32?) {
        guard let ledger else { return }
        pmll_store32(pmll_slot_wait(memory.slot(index), ledger), 0)
    }

    /// Threads of live processes waiting on each lock, by lock index.
    package func waiterCounts() -> [LockIndex: Int] {
        var counts: [LockIndex: Int] = [:]
        for index in memory.slots {
            let slot = memory.slot(index)
            guard pmll_load32(pmll_slot_state(slot)) == PMLL_SLOT_ACTIVE else { continue }
            let token = OwnerToken(slot: index, generation: pmll_load32(pmll_slot_generation(slot)))
            var waits: [LockIndex] = []
            for i in 0..<PMLL_WAIT_LEDGER {
                let v = pmll_load32(pmll_slot_wait(slot, i))
                if v != 0 && !ReaderLedger.isRead(v) { waits.append(LockIndex(v - 1)) }
            }
            guard !waits.isEmpty, isAlive(token) else { continue }
            for lock in waits { counts[lock, default: 0] += 1 }
        }
        return counts
    }
}
