import CPMLL

/// The result of ``Pool/check()``: every problem found, and what was looked at.
public struct CheckReport: Codable, Sendable {
    public var problems: [String] = []
    public var locksChecked = 0
    public var queueRecordsChecked = 0
    public var keysChecked = 0
    public var blocksUsed = 0
    public var blocksReferenced = 0
    public var ok: Bool { problems.isEmpty }
}

extension Pool {
    /// Verifies the whole pool: header (checked on open), process table, lock entries,
    /// queue heads and records, the state store's superblock, every key's checksum, extents
    /// against the allocation bitmap (no leaked, overlapping or dangling blocks), and that no
    /// transaction log is left pending. Takes the store lock for a consistent view.
    public func check() throws(PMLLError) -> CheckReport {
        var report = CheckReport()
        for index in 0..<memory.processCapacity {
            let s = memory.slot(index)
            if s.pointee.state > PMLL_SLOT_ACTIVE || s.pointee.generation > PMLL_MAX_GENERATION {
                report.problems.append("process slot \(index): state \(s.pointee.state), generation \(s.pointee.generation)")
            }
        }
        for index in 0..<memory.lockCapacity {
            let e = memory.lock(index)
            let state = pmll_load32(pmll_entry_state(e))
            if state == PMLL_ENTRY_EMPTY { continue }
            report.locksChecked += 1
            let name = withUnsafeBytes(of: e.pointee.name) { Array($0.prefix(Int(min(e.pointee.name_length, PMLL_NAME_MAX)))) }
            if state != PMLL_ENTRY_READY || e.pointee.entry_checksum != LockTable.checksum(level: e.pointee.level, name: name) {
                report.problems.append("lock entry \(index) ('\(String(decoding: name, as: UTF8.self))') fails its checksum")
            }
        }
        do {
            for (index, head) in try QueueTable(memory: memory, path: path).all() {
                let next = pmll_load64_acquire(&head.pointee.next_ticket), ring = UInt64(memory.layout.queueRing)
                for ticket in (next > ring ? next - ring : 0)..<next {
                    let r = memory.record(queue: index, ticket: ticket)
                    guard r.pointee.ticket == ticket, r.pointee.state != PMLL_RECORD_VOID else { continue }
                    report.queueRecordsChecked += 1
                    if RecordState.checksum(r) != r.pointee.checksum {
                        report.problems.append("queue '\(String(fixedCString: head.pointee.name))' record \(ticket) fails its checksum")
                    }
                }
            }
        } catch {
            report.problems.append("\(error)")
        }
        guard store.blockCount > 0 else { return report }
        try withStoreLock { () throws(PMLLError) in
            var owner = [Int32](repeating: -1, count: store.blockCount)
            for i in 0..<store.capacity {
                let s = store.slot(i)
                switch s.pointee.state {
                case PMLL_KEY_EMPTY, PMLL_KEY_TOMBSTONE: continue
                case PMLL_KEY_USED: break
                default:
                    report.problems.append("key slot \(i) has unknown state \(s.pointee.state)")
                    continue
                }
                report.keysChecked += 1
                do {
                    _ = try store.record(i)
                } catch {
                    report.problems.append("\(error)")
                }
                guard Int(s.pointee.first_block) + Int(s.pointee.block_count) <= store.blockCount else { continue }
                for b in Int(s.pointee.first_block)..<Int(s.pointee.first_block + s.pointee.block_count) {
                    if owner[b] >= 0 { report.problems.append("block \(b) belongs to key slots \(owner[b]) and \(i)") }
                    owner[b] = Int32(i)
                    report.blocksReferenced += 1
                    if !store.isAllocated(b) { report.problems.append("block \(b) of key slot \(i) is marked free") }
                }
            }
            for b in 0..<store.blockCount where store.isAllocated(b) {
                report.blocksUsed += 1
                if owner[b] < 0 { report.problems.append("block \(b) is allocated but belongs to no key (leak)") }
            }
            for i in 0..<store.layout.logSlots where isPending(store.logHeader(i)) {
                report.problems.append("transaction log \(i) is pending")
            }
        }
        return report
    }
}
