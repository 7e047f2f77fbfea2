package import CPMLL
#if canImport(Glibc)
import Glibc
#endif
public import PMLLCore

/// A writer that owns the word waiting for shared holders to leave. It marks the word
/// DRAINING (so that if it dies now, its takeover reports no death: its critical section never
/// began) and `readers` DRAIN (so that the last reader out wakes it), and sleeps on the low
/// half of `readers`.
///
/// Dead readers: at the owner-check interval (doubling while nothing is found, up to 32
/// intervals) the writer sums the ledgers of live processes; what the count holds beyond
/// that belongs to processes that died holding it shared, and is discounted by CAS.
package struct ReaderDrain: WaitMachine {
    package let pool: Pool
    package let entry: UnsafeMutablePointer<pmll_lock_entry_t>
    package let index: LockIndex
    package let deadline: Int64
    package let cancellation: Cancellation?
    package let start: Int64
    package let spinLimit: Int
    private var spins = 0, flagged = false, lastChance = false
    private var checkedAt: Int64, checkEvery: Int64

    package init(pool: Pool, entry: UnsafeMutablePointer<pmll_lock_entry_t>, index: LockIndex, deadline: Int64,
                 cancellation: Cancellation?, spinLimit: Int = 64) {
        self.pool = pool
        self.entry = entry
        self.index = index
        self.deadline = deadline
        self.cancellation = cancellation
        self.start = Clock.monotonicNanoseconds
        self.spinLimit = spinLimit
        self.checkedAt = start
        self.checkEvery = pool.ownerCheckNanoseconds
    }

    package var word: UnsafeMutablePointer<UInt32> { pmll_entry_readers_word(entry) }

    package mutating func advance() -> WaitStep<Void> {
        let readers = pmll_entry_readers(entry)
        while true {
            var v = pmll_load64_acquire(readers)
            if v & PMLL_READERS_COUNT == 0 {
                if v & PMLL_READERS_DRAIN != 0 {
                    if pmll_cas64(readers, &v, v & ~PMLL_READERS_DRAIN) == 0 { continue }
                }
                if flagged {
                    _ = pmll_and32(pmll_entry_word(entry), ~PMLL_WORD_DRAINING)
                    let waited = UInt64(max(0, Clock.monotonicNanoseconds - start))
                    let stats = pmll_entry_shared(entry)
                    pmll_add64(&stats.pointee.drains, 1)
                    pmll_add64(&stats.pointee.drain_total_ns, waited)
                    pmll_max64(&stats.pointee.drain_max_ns, waited)
                }
                return .done(())
            }
            if !flagged {
                flagged = true
                _ = pmll_or32(pmll_entry_word(entry), PMLL_WORD_DRAINING)
            }
            let now = Clock.monotonicNanoseconds
            if now - checkedAt >= checkEvery || deadline - now <= pool.ownerCheckNanoseconds {
                checkedAt = now
                if discountDeadReaders(v) {
                    checkEvery = pool.ownerCheckNanoseconds
                    continue
                }
                checkEvery = min(checkEvery * 2, pool.ownerCheckNanoseconds * 32)
            }
            let cancelled = cancellation?.isCancelled ?? false
            if lastChance || now >= deadline || cancelled { return .failed(failure(cancelled: cancelled)) }
            if spins < spinLimit {
                spins += 1
                pmll_cpu_relax()
                continue
            }
            if v & PMLL_READERS_DRAIN == 0 {
                if pmll_cas64(readers, &v, v | PMLL_READERS_DRAIN) == 0 { continue }
                v |= PMLL_READERS_DRAIN
            }
            return .sleep(expected: UInt32(truncatingIfNeeded: v), until: min(deadline, now + checkEvery))
        }
    }

    /// True if holds of dead readers were found and taken out of the count.
    private func discountDeadReaders(_ seen: UInt64) -> Bool {
        let live = pool.processes.readers(of: index).holds
        let counted = Int(seen & PMLL_READERS_COUNT)
        guard counted > live else { return false }
        var expected = seen
        guard pmll_cas64(pmll_entry_readers(entry), &expected, seen - UInt64(counted - live)) != 0 else { return false }
        pmll_add64(&pmll_entry_shared(entry).pointee.reader_deaths, UInt64(counted - live))
        pool.audit(.readerDeath, .ok, "lock '\(String(fixedCString: entry.pointee.name))': \(counted - live) shared hold(s) of dead readers discounted")
        return true
    }

    private func failure(cancelled: Bool) -> PMLLError {
        let name = String(fixedCString: entry.pointee.name)
        if cancelled { return .cancelled(lock: name) }
        pmll_add64(pmll_entry_timeouts(entry), 1)
        Telemetry.timeout(lock: String(fixedCString: entry.pointee.name))
        let reader = pool.processes.readers(of: index).readers.first
        pool.audit(.lockTimeout, .failed, "lock '\(name)': timed out waiting for readers to leave\(reader.map { " (pid \($0.pid), \($0.commandName))" } ?? "")")
        return .timeout(lock: name, holder: reader.map { HolderInfo(pid: $0.pid, commandName: $0.commandName, heldSinceNanoseconds: 0, shared: true) })
    }

    package mutating func runHere() throws(PMLLError) {
        while true {
            switch advance() {
            case .done: return
            case .failed(let error): throw error
            case .sleep(let expected, let until):
                let rc = pmll_futex_wait(word, expected, until)
                slept(timedOut: rc == -ETIMEDOUT, until: until)
            }
        }
    }

    package mutating func slept(timedOut: Bool, until: Int64) {
        if timedOut && until == deadline { lastChance = true }
    }

    package func failureWhileQueued(cancelled: Bool) -> PMLLError { failure(cancelled: cancelled) }

    /// Gives up the drain: the word stays owned (the caller releases it) without DRAINING.
    package func end() {
        if flagged { _ = pmll_and32(pmll_entry_word(entry), ~PMLL_WORD_DRAINING) }
    }
}

extension Pool {
    /// After taking the word: waits for shared holders to leave, or releases the word and throws.
    @usableFromInline @inline(never)
    package func drainReaders(index: LockIndex, deadline: Int64, cancellation: Cancellation?) throws(PMLLError) {
        cancellation?.waitBegins()
        let entry = memory.lock(index)
        if pmll_lock_biased(entry) != 0 { try revokeReaderBias(index: index, deadline: deadline, cancellation: cancellation) }
        var drain = ReaderDrain(pool: self, entry: entry, index: index, deadline: deadline, cancellation: cancellation)
        do {
            try drain.runHere()
            drain.end()
        } catch {
            drain.end()
            release(index: index)
            throw error
        }
    }

    package func drainReadersAsync(index: LockIndex, deadline: Int64) async throws {
        // Only the store lock is ever biased, and it is taken synchronously: this is for form.
        let entry = memory.lock(index)
        if pmll_lock_biased(entry) != 0 { try revokeReaderBias(index: index, deadline: deadline, cancellation: nil) }
        let drain = ReaderDrain(pool: self, entry: entry, index: index, deadline: deadline, cancellation: Cancellation(), spinLimit: 0)
        do {
            try await WaiterThread.shared.wait(drain)
        } catch {
            release(index: index)
            throw error
        }
    }
}
