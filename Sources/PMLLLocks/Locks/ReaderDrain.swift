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
/// **Revoking** (the writer found the reader bias on, ``ReaderBias``): biased holders are in
/// the ledgers only, so the writer waits until no live process's ledger holds the lock, then
/// turns the bias off. Each biased holder that leaves clears DRAIN and wakes it, and it scans
/// again (and at least every 50 µs to 2 ms, doubling: a holder of a word of its own can miss
/// the flag). Whatever the count still holds then belongs to dead readers.
///
/// Dead readers: at the owner-check interval (doubling while nothing is found, up to 32
/// intervals) the writer sums the ledgers of live processes; what the count holds beyond
/// that belongs to processes that died holding it shared, and is discounted by CAS. Their
/// ledgers are retired and the holds counted as reader deaths.
package struct ReaderDrain: WaitMachine {
    package let pool: Pool
    package let entry: UnsafeMutablePointer<pmll_lock_entry_t>
    package let index: LockIndex
    package let deadline: Int64
    package let cancellation: Cancellation?
    package let start: Int64
    package let spinLimit: Int
    /// Waiting for the ledgers, not just the count. Set at the start if the bias is on, and
    /// later if a counted holder that got in before the word was ours turns it on meanwhile.
    package private(set) var revoking: Bool
    private var spins = 0, flagged = false, lastChance = false
    private var checkedAt: Int64, checkEvery: Int64
    /// How long the first scan of the ledgers took (revoking only).
    private var scanCost: Int64 = -1
    /// Revoking: the longest sleep before the next scan. A holder that gives back a ledger
    /// word of its own may miss the DRAIN flag and not wake us (``SharedHolds/leaveBiased``).
    private var poll: Int64 = 50_000

    package init(pool: Pool, entry: UnsafeMutablePointer<pmll_lock_entry_t>, index: LockIndex, deadline: Int64,
                 cancellation: Cancellation?, revoking: Bool, spinLimit: Int = 64) {
        self.pool = pool
        self.entry = entry
        self.index = index
        self.deadline = deadline
        self.cancellation = cancellation
        self.revoking = revoking
        self.start = Clock.monotonicNanoseconds
        // A revoking writer scans the process table on every look: it spins little.
        self.spinLimit = revoking ? min(spinLimit, 4) : spinLimit
        self.checkedAt = start
        self.checkEvery = pool.ownerCheckNanoseconds
    }

    package var word: UnsafeMutablePointer<UInt32> { pmll_entry_readers_word(entry) }

    package mutating func advance() -> WaitStep<Void> {
        let readers = pmll_entry_readers(entry)
        while true {
            var v = pmll_load64_acquire(readers)
            let done: Bool
            if revoking {
                // `v` before the scan: a reader counted in since makes the CAS below fail.
                pmll_fence()
                let scanStart = Clock.monotonicNanoseconds
                let found = pool.processes.ledgers(of: index)
                if scanCost < 0 { scanCost = Clock.monotonicNanoseconds - scanStart }
                if !found.dead.isEmpty { pool.retireDeadReaders(found.dead, lock: entry) }
                done = found.holds == 0
                if done && v & (PMLL_READERS_COUNT | PMLL_READERS_DRAIN) != 0 {
                    // No live process holds it: what is counted is dead readers' holds.
                    if pmll_cas64(readers, &v, v & ~(PMLL_READERS_COUNT | PMLL_READERS_DRAIN)) == 0 { continue }
                }
            } else {
                done = v & PMLL_READERS_COUNT == 0
                // A counted holder that got in before our word CAS may have turned the bias on
                // after we looked (``Pool/enableReaderBias(_:)``); a biased reader that had
                // loaded the word before our CAS then goes in uncounted. Holders turn it on
                // before they leave, so the load that shows the count empty shows it.
                if done && v & PMLL_READERS_BIASED != 0 {
                    revoking = true
                    continue
                }
                if done && v & PMLL_READERS_DRAIN != 0 {
                    if pmll_cas64(readers, &v, v & ~PMLL_READERS_DRAIN) == 0 { continue }
                }
            }
            if done {
                if flagged {
                    _ = pmll_and32(pmll_entry_word(entry), ~PMLL_WORD_DRAINING)
                    let waited = UInt64(max(0, Clock.monotonicNanoseconds - start))
                    let stats = pmll_entry_shared(entry)
                    pmll_add64(&stats.pointee.drains, 1)
                    pmll_add64(&stats.pointee.drain_total_ns, waited)
                    pmll_max64(&stats.pointee.drain_max_ns, waited)
                }
                inhibitBias()
                return .done(())
            }
            if !flagged {
                flagged = true
                _ = pmll_or32(pmll_entry_word(entry), PMLL_WORD_DRAINING)
            }
            let now = Clock.monotonicNanoseconds
            if now - checkedAt >= checkEvery || deadline - now <= pool.ownerCheckNanoseconds {
                checkedAt = now
                if !revoking && discountDeadReaders(v) {
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
                // Revoking: a biased holder that left before DRAIN was set did not wake us.
                if revoking { continue }
            }
            var until = now + checkEvery
            if revoking {
                until = min(until, now + poll)
                poll = min(poll * 2, 2_000_000)
            }
            return .sleep(expected: UInt32(truncatingIfNeeded: v), until: min(deadline, until))
        }
    }

    /// After a revocation, with no biased holder left and the word still ours: the bias off,
    /// and kept off for nine scans' time (at least 100 µs).
    private func inhibitBias() {
        guard revoking else { return }
        _ = pmll_and64(pmll_entry_readers(entry), ~PMLL_READERS_BIASED)
        let hold = max(9 * max(scanCost, 0), ReaderBias.minimumInhibition)
        pmll_store64(&entry.pointee.bias_inhibit_until, UInt64(Clock.monotonicNanoseconds + hold))
        _ = pmll_or64(pmll_entry_readers(entry), PMLL_READERS_INHIBITED)
    }

    /// True if holds of dead readers were found and taken out of the count.
    private func discountDeadReaders(_ seen: UInt64) -> Bool {
        let found = pool.processes.ledgers(of: index)
        if !found.dead.isEmpty { pool.retireDeadReaders(found.dead, lock: entry) }
        let counted = Int(seen & PMLL_READERS_COUNT)
        guard counted > found.holds else { return false }
        var expected = seen
        return pmll_cas64(pmll_entry_readers(entry), &expected, seen - UInt64(counted - found.holds)) != 0
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

    /// The drain is over: the word stays owned (the caller releases it on failure) without DRAINING.
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
        var drain = ReaderDrain(pool: self, entry: entry, index: index, deadline: deadline, cancellation: cancellation,
                                revoking: readerBiasIsOn(entry))
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
        let entry = memory.lock(index)
        let drain = ReaderDrain(pool: self, entry: entry, index: index, deadline: deadline, cancellation: Cancellation(),
                                revoking: readerBiasIsOn(entry), spinLimit: 0)
        do {
            try await WaiterThread.shared.wait(drain)
        } catch {
            drain.end()
            release(index: index)
            throw error
        }
    }
}
