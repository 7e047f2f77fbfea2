package import CPMLL
package import PMLLCore
import PMLLLocks
import PMLLStore

/// One operation as recorded in the pool (see Docs/Queues.md for the format).
package enum RecordState {
    package static func name(_ raw: UInt32) -> OperationRecord.State {
        switch raw {
        case PMLL_RECORD_QUEUED: .queued
        case PMLL_RECORD_RUNNING: .running
        case PMLL_RECORD_SUCCEEDED: .succeeded
        case PMLL_RECORD_FAILED: .failed
        case PMLL_RECORD_ABANDONED: .abandoned
        default: .void
        }
    }

    package static func isFinal(_ raw: UInt32) -> Bool {
        raw == PMLL_RECORD_SUCCEEDED || raw == PMLL_RECORD_FAILED || raw == PMLL_RECORD_ABANDONED || raw == PMLL_RECORD_VOID
    }

    package static func checksum(_ r: UnsafeMutablePointer<pmll_record_t>) -> UInt32 {
        var crc = withUnsafeBytes(of: r.pointee.ticket) { pmll_crc32c(0, $0.baseAddress, $0.count) }
        crc = withUnsafeBytes(of: r.pointee.kind) { pmll_crc32c(crc, $0.baseAddress, $0.count) }
        crc = withUnsafeBytes(of: r.pointee.payload_length) { pmll_crc32c(crc, $0.baseAddress, $0.count) }
        let length = min(Int(r.pointee.payload_length), Int(PMLL_PAYLOAD_MAX))
        return withUnsafeBytes(of: r.pointee.payload) { pmll_crc32c(crc, $0.baseAddress, length) }
    }

    package static func snapshot(_ r: UnsafeMutablePointer<pmll_record_t>, queue: String) -> OperationRecord {
        let length = min(Int(r.pointee.payload_length), Int(PMLL_PAYLOAD_MAX))
        return OperationRecord(
            queue: queue, ticket: r.pointee.ticket, kind: String(fixedCString: r.pointee.kind),
            state: name(pmll_load32(pmll_record_state(r))), ownerPid: r.pointee.owner_pid,
            ownerCommand: String(fixedCString: r.pointee.owner_comm), attempts: r.pointee.attempts,
            batchRemaining: r.pointee.batch_size, recovered: r.pointee.recovered != 0,
            submittedAtNanoseconds: r.pointee.submitted_ns, startedAtNanoseconds: r.pointee.started_ns,
            finishedAtNanoseconds: r.pointee.finished_ns, lastError: String(fixedCString: r.pointee.error),
            payload: withUnsafeBytes(of: r.pointee.payload) { Array($0.prefix(length)) })
    }
}
