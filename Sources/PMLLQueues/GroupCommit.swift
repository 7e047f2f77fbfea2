import CPMLL
package import PMLLCore
import PMLLLocks
import PMLLStore

/// Group commit for queue records on msync-backed pools: one `msync` of a queue's whole ring
/// makes durable every record that was complete in memory when it started, so concurrent
/// writers share barriers.
///
/// A writer whose record is complete takes a sequence number from `flush_requested` (a
/// full-barrier fetch-add, so its stores come first). It is durable once `flush_completed`
/// reaches that number. If a flush covering it has started (`flush_started` ≥ its number),
/// it waits for that flush, but for at most one owner-check interval (the flusher may have
/// died). Otherwise it flushes itself, covering everybody counted so far. Flushes may run
/// concurrently: the filesystem's journal batches them further.
package enum GroupCommit {
    package static func flush(_ engine: QueueEngine) throws(PMLLError) {
        let head = engine.head
        let pool = engine.pool
        let mine = pmll_fetch_add64(&head.pointee.flush_requested, 1) + 1
        let word = withUnsafeMutablePointer(to: &head.pointee.flush_word) { $0 }
        var waitedFor: UInt64 = 0
        while true {
            let w = pmll_load32(word)
            if pmll_load64_acquire(&head.pointee.flush_completed) >= mine { return }
            let started = pmll_load64_acquire(&head.pointee.flush_started)
            if started >= mine && started != waitedFor {
                var expected: UInt32 = 0
                guard pmll_wakeword_announce_sleeper(word, w, &expected) != 0 else { continue }   // a flush completed: look again
                waitedFor = started
                _ = pmll_futex_wait(word, expected, Clock.monotonicNanoseconds + pool.ownerCheckNanoseconds)
                continue
            }
            let upTo = pmll_load64_acquire(&head.pointee.flush_requested)
            pmll_max64(&head.pointee.flush_started, upTo)
            let ring = pool.memory.record(queue: engine.index, ticket: 0)
            try pool.memory.persistence.persist(UnsafeRawPointer(ring), pool.memory.layout.queueRing * MemoryLayout<pmll_record_t>.size, site: "queue.record")
            pmll_max64(&head.pointee.flush_completed, upTo)
            _ = pmll_wakeword_bump(word)
            return
        }
    }
}
