import CPMLL
package import PMLLCore
import PMLLLocks
import PMLLStore

extension Pool {
    /// The queue layer's part of ``Pool/check()``: every live record's checksum.
    package func checkQueueRecords(into report: inout CheckReport) {
        do {
            for (index, head) in try QueueTable(memory: memory, path: path).all() {
                let next = pmll_load64_acquire(&head.pointee.next_ticket), ring = UInt64(memory.layout.queueRing)
                let serving = pmll_load64_acquire(&head.pointee.serving)
                guard next < QueueEngine.impossibleTicket, serving <= next else {
                    report.problems.append("queue '\(String(fixedCString: head.pointee.name))' has impossible tickets (next \(next), serving \(serving))")
                    continue
                }
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
    }
}
