import CPMLL
package import PMLLCore
import PMLLLocks

extension Pool {
    /// The store layer's part of ``Pool/check()``, under the store lock for a consistent
    /// view: the superblock, every key's checksum, extents against the allocation bitmap (no
    /// leaked, overlapping or dangling blocks), and no transaction log left pending.
    package func checkStore(into report: inout CheckReport) throws(PMLLError) {
        let store = self.store
        guard store.exists else { return }
        try withStoreLock { () throws(PMLLError) in
            let view = store.view
            // Every slot and every block is read below.
            memory.prefetch(view.index)
            for span in view.blockSpanBytes { memory.prefetch(span) }
            let fileSize = try memory.mapping.fileSize()
            if view.end > fileSize { report.problems.append("the state store's areas end at \(view.end) bytes but the file has \(fileSize)") }
            var owner = [Int32](repeating: -1, count: view.blockLimit)
            var journals: UInt64 = 0
            for i in 0..<view.capacity {
                let s = view.slot(i)
                switch s.pointee.state {
                case PMLL_KEY_EMPTY, PMLL_KEY_TOMBSTONE: continue
                case PMLL_KEY_USED: break
                default:
                    report.problems.append("key slot \(i) has unknown state \(s.pointee.state)")
                    continue
                }
                report.keysChecked += 1
                do {
                    let record = try store.recordInPlace(i)
                    if s.pointee.key_length >= StateStore.journalPrefixBytes.count, record.starts(with: StateStore.journalPrefixBytes) { journals += 1 }
                } catch {
                    report.problems.append("\(error)")
                }
                guard s.pointee.block_count > 0, view.extentExists(first: Int(s.pointee.first_block), count: Int(s.pointee.block_count)) else { continue }
                for b in Int(s.pointee.first_block)..<Int(s.pointee.first_block + s.pointee.block_count) {
                    if owner[b] >= 0 { report.problems.append("block \(b) belongs to key slots \(owner[b]) and \(i)") }
                    owner[b] = Int32(i)
                    report.blocksReferenced += 1
                    if !view.isAllocated(b) { report.problems.append("block \(b) of key slot \(i) is marked free") }
                }
            }
            if let census = store.censusCount, census != UInt64(report.keysChecked) {
                report.problems.append("the store's census counts \(census) keys but \(report.keysChecked) key slots are in use: a key slot was damaged (a key vanished or appeared)")
            } else if store.censusIsDamaged {
                report.problems.append("the store's key census fails its checksum")
            }
            if let counted = store.journalCount, counted != journals {
                // Recovery trusts a count of 0 and would not look for a dead batch's journal.
                report.problems.append("the store's census counts \(counted) file-batch journals but \(journals) keys under '\(StateStore.journalPrefix)' exist")
            }
            for span in view.spans {
                for b in span.first..<span.end where view.isAllocated(b) {
                    report.blocksUsed += 1
                    if owner[b] < 0 { report.problems.append("block \(b) is allocated but belongs to no key (leak)") }
                }
            }
            for i in 0..<store.layout.logSlots where isPending(store.logHeader(i)) {
                report.problems.append("transaction log \(i) is pending")
            }
        }
    }
}
