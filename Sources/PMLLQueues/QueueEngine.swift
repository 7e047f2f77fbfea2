package import CPMLL
package import PMLLCore
import PMLLLocks
import PMLLStore

/// The blocking core of a hardened queue (Docs/Queues.md):
///
/// - submit: under the queue's robust submit lock, hand out consecutive tickets, write their
///   records, make them durable, then publish by advancing `next_ticket`. A submitter killed
///   before publishing leaves nothing visible.
/// - turn: the ticket equal to `serving` may run. The waiter of ticket t sleeps on t's turn
///   word in the head (bounded by the owner-check interval) and moves `serving` past torn
///   records and past records whose owner died (marking queued or running ones abandoned).
/// - finish: write the final state, advance `serving` (and past records right behind it
///   that are already over) and wake the waiter of the next ticket only (and, while
///   operations are short, the one next in line after it, which spins for its turn); the
///   state is made durable before the pass on pmem, beside the next `begin` on msync pools.
package struct QueueEngine: @unchecked Sendable {
    package let pool: Pool
    package let index: UInt32
    package let submitLock: LockIndex
    package let name: String
    /// `name` as audit records write it: copied once, not per record.
    let nameBytes: [UInt8]
    package let persistent: Bool
    /// This queue's swift-metrics handles, looked up once per engine.
    let telemetry: QueueTelemetry

    package init(pool: Pool, index: UInt32, submitLock: LockIndex, name: String, persistent: Bool) {
        self.pool = pool
        self.index = index
        self.submitLock = submitLock
        self.name = name
        nameBytes = Array(name.utf8)
        self.persistent = persistent
        telemetry = pool.telemetry.queue(name)
    }

    package var head: UnsafeMutablePointer<pmll_queue_head_t> { pool.memory.queue(index) }
    package var ring: UInt64 { UInt64(pool.memory.layout.queueRing) }
    package func record(_ ticket: UInt64) -> UnsafeMutablePointer<pmll_record_t> { pool.memory.record(queue: index, ticket: ticket) }

    package static let recordHeaderBytes = Int(MemoryLayout<pmll_record_t>.offset(of: \pmll_record_t.payload)!)
    /// A ticket no queue can reach (see `publish`): past it the head is damaged.
    package static let impossibleTicket: UInt64 = 1 << 62

    package static func validate(kind: String, payload: [UInt8]) throws(PMLLError) {
        let bytes = kind.utf8.count
        guard bytes > 0, bytes <= Int(PMLL_KIND_MAX), !kind.utf8.contains(0) else {
            throw .invalidOperationKind(kind: kind, reason: bytes == 0 ? "empty" : bytes > Int(PMLL_KIND_MAX) ? "\(bytes) bytes; the limit is \(PMLL_KIND_MAX)" : "contains NUL")
        }
        guard payload.count <= Int(PMLL_PAYLOAD_MAX) else { throw .payloadTooLarge(bytes: payload.count, limit: Int(PMLL_PAYLOAD_MAX)) }
    }

    /// Makes a record durable: a cache flush of its bytes on real pmem, else a share of a
    /// group-committed msync of the ring.
    package func persist(_ r: UnsafeMutablePointer<pmll_record_t>, payload: Bool = false) throws(PMLLError) {
        guard persistent else { return }
        if pool.memory.persistence.isPmem {
            let length = payload ? Self.recordHeaderBytes + min(Int(r.pointee.payload_length), Int(PMLL_PAYLOAD_MAX)) : Self.recordHeaderBytes
            try pool.memory.persistence.persist(UnsafeRawPointer(r), length, site: "queue.record")
        } else {
            try GroupCommit.flush(self)
        }
    }

    // MARK: submit

    /// Returns the first ticket, and whether it was already its turn (then its record was
    /// written RUNNING with its first attempt started: one durable barrier saved).
    package func submit(_ operations: [(kind: String, payload: [UInt8])], deadline: Int64) async throws -> (first: UInt64, started: Bool) {
        for op in operations { try Self.validate(kind: op.kind, payload: op.payload) }
        guard !operations.isEmpty else { throw PMLLError.invalidOperationKind(kind: "", reason: "no operations given") }
        guard UInt64(operations.count) <= ring else {
            throw PMLLError.poolFull(table: "queue '\(name)' ring", capacity: Int(ring))
        }
        while true {
            _ = try await pool.acquireAsync(index: submitLock, deadline: deadline)
            let room: UInt64
            do {
                defer { pool.release(index: submitLock) }
                switch try publish(operations) {
                case .published(let first, let started): return (first, started)
                case .waitForRoom(let serving): room = serving
                case .waitForOwner(let passed):
                    guard Clock.monotonicNanoseconds < deadline else {
                        throw PMLLError.queueTimeout(queue: name, ticket: pmll_load64_acquire(&head.pointee.next_ticket), blockedBy: passed)
                    }
                    room = 0
                }
            }
            if room == 0 {
                // A passed operation's owner has not seen that yet: its slot is still its own.
                do { try await Task.sleep(nanoseconds: 1_000_000) } catch {
                    throw PMLLError.queueCancelled(queue: name, ticket: pmll_load64_acquire(&head.pointee.next_ticket))
                }
                continue
            }
            // The ring is full: wait for room without holding the submit lock, then try again.
            try await waitForServing(atLeast: room, deadline: deadline, ticket: pmll_load64_acquire(&head.pointee.next_ticket))
        }
    }

    private enum Publication {
        case published(first: UInt64, started: Bool)
        /// Not enough room in the ring until `serving` reaches this.
        case waitForRoom(UInt64)
        /// A slot to reuse holds an operation passed while its owner was stopped, and that
        /// owner, alive, has not yet seen it (``passStopped(_:_:owner:)``).
        case waitForOwner(OperationRecord)
    }

    /// Writes and publishes the records; the caller holds the submit lock.
    private func publish(_ operations: [(kind: String, payload: [UInt8])]) throws(PMLLError) -> Publication {
        // A dead previous submitter published nothing it did not finish: nothing to repair.
        let first = head.pointee.next_ticket
        let n = UInt64(operations.count)
        let serving = pmll_load64_acquire(&head.pointee.serving)
        // Tickets count up from 0, one per operation: 2^62 of them would take a million
        // operations a second for 146,000 years. Beyond that, or behind `serving`, the head
        // is damaged, and adding to it must not trap.
        guard first < Self.impossibleTicket, serving <= first else {
            throw .corruptPool(path: pool.path, reason: "queue '\(name)' has impossible tickets (next \(first), serving \(serving))")
        }
        if first + n > serving + ring {
            return .waitForRoom(first + n - ring)
        }
        for i in 0..<n where first + i >= ring {
            let old = record(first + i)
            if pmll_load32(pmll_record_passed(old)) == PMLL_PASSED_UNSEEN && pmll_load32(pmll_record_state(old)) == PMLL_RECORD_VOID
                && pool.processes.isAlive(OwnerToken(rawValue: old.pointee.owner_token)) {
                return .waitForOwner(RecordState.snapshot(old, queue: name))
            }
        }
        for i in 0..<n where first + i >= ring {
            let old = record(first + i)
            if pmll_load32(pmll_record_state(old)) == PMLL_RECORD_ABANDONED && old.pointee.recovered == 0 {
                try park(old)
            }
        }
        let startsNow = n == 1 && pmll_load64_acquire(&head.pointee.serving) == first
        let now = UInt64(Clock.realtimeNanoseconds)
        let comm = pool.processes.memory.slot(pool.slot).pointee.comm
        for (i, op) in operations.enumerated() {
            let ticket = first + UInt64(i)
            let r = record(ticket)
            pmll_store32(pmll_record_state(r), PMLL_RECORD_FREE)
            r.pointee.ticket = ticket
            r.pointee.owner_token = pool.token.rawValue
            r.pointee.owner_pid = pool.processID
            r.pointee.owner_comm = comm
            r.pointee.attempts = startsNow ? 1 : 0
            r.pointee.batch_size = UInt32(operations.count - i)
            r.pointee.recovered = 0
            pmll_store32(pmll_record_passed(r), n == 1 && !startsNow ? PMLL_PASSED_ELIGIBLE : PMLL_PASSED_NONE)
            r.pointee.submitted_ns = now
            r.pointee.started_ns = startsNow ? now : 0
            r.pointee.finished_ns = 0
            writeFixedCString(op.kind, into: &r.pointee.kind)
            writeFixedCString("", into: &r.pointee.error)
            r.pointee.payload_length = UInt32(op.payload.count)
            withUnsafeMutableBytes(of: &r.pointee.payload) { $0.copyBytes(from: op.payload) }
            r.pointee.checksum = RecordState.checksum(r)
            pmll_store32(pmll_record_state(r), startsNow ? PMLL_RECORD_RUNNING : PMLL_RECORD_QUEUED)
            try persist(r, payload: true)
            if pool.auditQueueSteps {
                pool.audit(.queueSubmit, at: Int64(now)) { describe(ticket, r, &$0) }
                if startsNow { pool.audit(.queueStart, at: Int64(now)) { describe(ticket, r, &$0); $0.add(" attempt 1") } }
            }
        }
        pmll_store64_release(&head.pointee.next_ticket, first + n)
        CrashPoint.hit("queue.submitted")
        return .published(first: first, started: startsNow)
    }

    /// Moves an abandoned record that recovery has not handled yet out of the ring, into the
    /// state store (`pmll:abandoned/QUEUE/TICKET`), so that its slot can be reused without
    /// losing it and without blocking the queue. Recovery finds it there.
    private func park(_ r: UnsafeMutablePointer<pmll_record_t>) throws(PMLLError) {
        let snapshot = RecordState.snapshot(r, queue: name)
        try pool.parkAbandoned(snapshot)
        r.pointee.recovered = QueueEngine.parked
        try persist(r)
    }

    /// `recovered` value of a ring record whose abandoned operation was moved to the store.
    package static let parked: UInt32 = 2

    // MARK: turns

    /// Waits until `serving == ticket`. On timeout or cancellation the ticket is voided
    /// (nothing ran) so that it never blocks the queue.
    package func waitForTurn(_ ticket: UInt64, deadline: Int64) async throws {
        do {
            try await waitForServing(atLeast: ticket, deadline: deadline, ticket: ticket, spinWhenNext: operationsAreShort)
        } catch {
            void(ticket)
            throw error
        }
    }

    /// Waits on the ``WaiterThread`` (in ticket order among this process's waits on the queue).
    ///
    /// `spinWhenNext` (a turn to run an operation): once the ticket is next in line, the
    /// wait returns to the task, which spins for its turn on its own thread. The handoff
    /// from the operation before then costs no thread wake-up: on a machine with idle
    /// cores those two wake-ups (this process's waiter thread, then the task's thread) cost
    /// tens of microseconds each, far more than an operation on tmpfs, and now happen while
    /// the operation before runs. One waiter per queue spins, for 20 µs at most.
    private func waitForServing(atLeast target: UInt64, deadline: Int64, ticket: UInt64, spinWhenNext: Bool = false) async throws {
        var spun = false
        while true {
            let serving = pmll_load64_acquire(&head.pointee.serving)
            if serving >= target { return }
            if spinWhenNext && !spun && serving &+ 1 == target {
                spun = true
                if turnCameWhileSpinning(target, deadline: deadline) { return }
            }
            let wait = ServingWait(engine: self, target: target, deadline: deadline, ticket: ticket, cancellation: Cancellation(),
                                   returnWhenNext: spinWhenNext && !spun)
            if try await WaiterThread.shared.wait(wait, order: target) { return }
        }
    }

    /// Whether this queue's recent operations ran for less than 50 µs on average: then the
    /// waiter next in line is woken early and spins for its turn. Longer ones (a durable
    /// barrier on disk takes 100 µs and more) would outlast the spin, and the early wake
    /// would only cost CPU. (Above the spin budget: on tmpfs one preempted operation of a
    /// few hundred microseconds must not turn spinning off for the next twenty.)
    var operationsAreShort: Bool { pmll_load64(&head.pointee.recent_run_ns) < 50_000 }

    /// Spins on the calling thread until `serving` reaches `target`, for the spin budget.
    private func turnCameWhileSpinning(_ target: UInt64, deadline: Int64) -> Bool {
        var spin = SpinBackoff(start: Clock.monotonicNanoseconds, budget: SpinBackoff.defaultBudgetNanoseconds, deadline: deadline)
        while spin.pause() {
            if pmll_load64_acquire(&head.pointee.serving) >= target { return true }
        }
        return false
    }

    /// Waiting until `serving` reaches a ticket: waiters sleep on the ticket's turn word
    /// (bounded by the owner-check interval) and move `serving` past torn records and past
    /// records whose owner died.
    package struct ServingWait: WaitMachine, @unchecked Sendable {
        package let engine: QueueEngine
        package let target: UInt64
        package let deadline: Int64
        package let ticket: UInt64
        package let cancellation: Cancellation?
        /// End the wait (with false) as soon as `target` is next in line.
        package let returnWhenNext: Bool
        private var checked: UInt64 = .max, checkedAt: Int64 = 0, servedSince: Int64 = 0

        package init(engine: QueueEngine, target: UInt64, deadline: Int64, ticket: UInt64, cancellation: Cancellation?, returnWhenNext: Bool = false) {
            self.engine = engine
            self.target = target
            self.deadline = deadline
            self.ticket = ticket
            self.cancellation = cancellation
            self.returnWhenNext = returnWhenNext
        }

        /// `target`'s turn word in the head: bumped when `serving` reaches `target` or
        /// `target − 1`, so a finished operation wakes only the process whose turn it is and
        /// the one next in line (and any waiter of a ticket 16, 32, … further on, which looks
        /// and sleeps again).
        package var word: UnsafeMutablePointer<UInt32> { pmll_queue_turn_word(engine.head, target) }
        /// This process's waits on one queue are driven one at a time, lowest ticket first.
        package var queueKey: UnsafeMutablePointer<UInt32> { pmll_queue_serving_word(engine.head) }

        /// True once `serving` reached `target`; false when it is next in line and
        /// `returnWhenNext`.
        package mutating func advance() -> WaitStep<Bool> {
            let head = engine.head
            let check = engine.pool.ownerCheckNanoseconds
            while true {
                let w = pmll_load32(word)
                let s = pmll_load64_acquire(&head.pointee.serving)
                if s >= target { return .done(true) }
                if returnWhenNext && s &+ 1 == target { return .done(false) }
                let now = Clock.monotonicNanoseconds
                if s != checked { checked = s; checkedAt = now; servedSince = now }
                let due = now - checkedAt >= check || deadline - now <= check
                if engine.skipIfDone(s, checkOwner: due, servedFor: now - servedSince) { continue }
                if due { checkedAt = now }
                if now >= deadline { return .failed(failureWhileQueued(cancelled: false)) }
                if cancellation?.isCancelled == true { return .failed(failureWhileQueued(cancelled: true)) }
                var expected: UInt32 = 0
                guard pmll_wakeword_announce_sleeper(word, w, &expected) != 0 else { continue }   // bumped: look again
                return .sleep(expected: expected, until: min(deadline, now + check))
            }
        }

        package mutating func slept(timedOut: Bool, until: Int64) {}

        package func failureWhileQueued(cancelled: Bool) -> PMLLError {
            if cancelled { return .queueCancelled(queue: engine.name, ticket: ticket) }
            let s = pmll_load64_acquire(&engine.head.pointee.serving)
            return .queueTimeout(queue: engine.name, ticket: ticket, blockedBy: RecordState.snapshot(engine.record(s), queue: engine.name))
        }
    }

    /// Moves `serving` past ticket `s` if its record is torn, or if its owner is gone
    /// (checked only when `checkOwner`): a finished or void record as it is, a queued or
    /// running one marked abandoned; or if it is a queued operation whose process has been
    /// stopped since its turn came, `servedFor` ns ago (``passStopped(_:_:owner:)``). True if it moved.
    fileprivate func skipIfDone(_ s: UInt64, checkOwner: Bool, servedFor: Int64 = 0) -> Bool {
        let r = record(s)
        let state = pmll_load32(pmll_record_state(r))
        if r.pointee.ticket != s || state == PMLL_RECORD_FREE {
            // Published (s < next_ticket) but not there: a torn record after power loss.
            guard s < pmll_load64_acquire(&head.pointee.next_ticket) else { return false }
            r.pointee.ticket = s
            pmll_store32(pmll_record_state(r), PMLL_RECORD_VOID)
            return advance(from: s)
        }
        // A finished or voided record is passed on by its owner once its state is durable
        // (`finish`, `void`, or a finisher's pass over voided tickets behind it). Passing it
        // before that would let the next operation start while this one's end is not yet
        // durable: on pmem, where each record is flushed alone, a power loss would then show
        // it running after its successor ran. So a waiter passes it only for an owner that
        // died first, and makes it durable first.
        let over = RecordState.isFinal(state)
        guard checkOwner else { return false }
        let owner = OwnerToken(rawValue: r.pointee.owner_token)
        if pool.processes.isAlive(owner) {
            if state == PMLL_RECORD_VOID && Self.wasPassed(r) {
                // Passed while its owner was stopped, and the turn is still here: the passer
                // died between the two (``passStopped(_:_:owner:)``), or is about to move it
                // (moving the turn is a compare-and-swap: one of us does). The owner, alive,
                // never moves it: it submits again, behind this ticket.
                makeDurableBeforePassing(r)
                return advance(from: s)
            }
            return state == PMLL_RECORD_QUEUED && servedFor >= Self.stoppedOwnerGrace && passStopped(s, r, owner: owner)
        }
        if over {
            makeDurableBeforePassing(r)
            return advance(from: s)
        }
        var expected = state
        if pmll_cas32(pmll_record_state(r), &expected, PMLL_RECORD_ABANDONED) != 0 {
            pmll_store32(pmll_record_passed(r), PMLL_PASSED_NONE)
            r.pointee.finished_ns = UInt64(Clock.realtimeNanoseconds)
            writeFixedCString("owner pid \(r.pointee.owner_pid) died while \(state == PMLL_RECORD_RUNNING ? "running" : "queued")", into: &r.pointee.error)
            try? persist(r)
            pmll_add64(&head.pointee.abandoned, 1)
            pool.audit(.queueAbandon, .failed) { text in
                describe(s, r, &text)
                text.add(": owner pid ")
                text.add(UInt64(UInt32(bitPattern: r.pointee.owner_pid)))
                text.add(state == PMLL_RECORD_RUNNING ? " died while running, attempt " : " died while queued")
                if state == PMLL_RECORD_RUNNING { text.add(UInt64(r.pointee.attempts)) }
                submittedAt(r, &text)
            }
        }
        return advance(from: s)
    }

    /// How long a queued operation's turn may wait for its stopped process before it is passed:
    /// the lock handoff's claim limit (Docs/LockProtocol.md "Fairness handoff").
    package static let stoppedOwnerGrace: Int64 = 50_000_000

    /// A queued operation whose turn came while its process is stopped (Ctrl-Z, SIGSTOP) would
    /// keep everyone behind it waiting until the process is resumed; it is passed instead, as
    /// a lock handed to a stopped waiter is. Its ticket becomes void (nothing ran), compared
    /// on the state, so of the owner starting it (``begin(_:attempt:)``) and a waiter passing
    /// it exactly one wins; the owner, once resumed, finds its ticket void and submits the
    /// operation again, at the end of the queue. Execution still follows ticket order. Not a
    /// running operation (its process holds the turn, as a stopped holder holds its lock), nor
    /// one of a batch (its operations run with nothing in between), nor one submitted by a
    /// build that does not know passing (``PMLL_PASSED_ELIGIBLE``).
    private func passStopped(_ s: UInt64, _ r: UnsafeMutablePointer<pmll_record_t>, owner: OwnerToken) -> Bool {
        guard pmll_load32(pmll_record_passed(r)) == PMLL_PASSED_ELIGIBLE, let id = pool.processes.identity(of: owner),
              pmll_process_stopped(id.pid, id.startTime) == 1 else { return false }
        // Unseen first, then void: until its owner has seen the pass, no submitter reuses the
        // slot (the owner's `begin` compares the state of this slot, which must still be its own
        // record's), and an owner whose `begin` finds the record void finds it unseen too, and
        // marks it seen. Marked the other way round, an owner resumed between the two would
        // leave the slot unseen for good.
        var eligible = PMLL_PASSED_ELIGIBLE
        guard pmll_cas32(pmll_record_passed(r), &eligible, PMLL_PASSED_UNSEEN) != 0 else { return false }
        var expected = PMLL_RECORD_QUEUED
        guard pmll_cas32(pmll_record_state(r), &expected, PMLL_RECORD_VOID) != 0 else {
            // It started, timed out or died meanwhile (each of which clears the word after its
            // own change of state): as it was, unless that clearing came first.
            var unseen = PMLL_PASSED_UNSEEN
            _ = pmll_cas32(pmll_record_passed(r), &unseen, PMLL_PASSED_ELIGIBLE)
            return false
        }
        r.pointee.finished_ns = UInt64(Clock.realtimeNanoseconds)
        writeFixedCString("passed: owner pid \(id.pid) was stopped when its turn came (it submits again once resumed)", into: &r.pointee.error)
        try? persist(r)
        // Before the turn moves on, as an operation's end is (``finish(_:succeeded:error:)``):
        // a passer killed between the two has recorded its pass; the other way round it could
        // leave none. And before the move the record's slot is still this ticket's to read.
        pool.audit(.queuePass, .ok) { text in
            describe(s, r, &text)
            text.add(": owner pid ")
            text.add(UInt64(clamping: id.pid))
            text.add(" was stopped when its turn came")
            submittedAt(r, &text)
        }
        CrashPoint.hit("queue.passed")
        advance(from: s)
        return true
    }

    /// Whether `r` was voided by ``passStopped(_:_:owner:)`` (its owner has not seen it, or has):
    /// a void of the owner's own clears the word.
    private static func wasPassed(_ r: UnsafeMutablePointer<pmll_record_t>) -> Bool {
        let passed = pmll_load32(pmll_record_passed(r))
        return passed == PMLL_PASSED_UNSEEN || passed == PMLL_PASSED_SEEN
    }

    /// Moves `serving` past `s`, then past the records right behind it that are already over
    /// (voided by a waiter that timed out or was cancelled): the next waiters sleep on turn
    /// words that only this move would bump. True (the caller looks again).
    @discardableResult
    private func advance(from s: UInt64) -> Bool {
        guard pass(s) else { return true }   // someone else moved it
        var t = s + 1
        // Only published records: a publisher may be writing ticket `next_ticket` now.
        while t < pmll_load64_acquire(&head.pointee.next_ticket) {
            // `void` sets VOID, then looks at `serving`; we moved `serving`, then look at the
            // state: one of the two sees the other (a full fence between each pair).
            pmll_fence()
            let r = record(t)
            guard r.pointee.ticket == t, RecordState.isFinal(pmll_load32(pmll_record_state(r))) else { break }
            // Voided by a waiter that may not have made it durable yet (it persists, then
            // looks at `serving`).
            makeDurableBeforePassing(r)
            guard pass(t) else { break }
            t += 1
        }
        return true
    }

    /// Makes a record that another process ended durable before `serving` moves past it. Only
    /// pmem needs a flush here: there each record is flushed alone, while on an msync pool the
    /// operation after it makes its own record durable (submit or `begin`) before its body runs,
    /// with an msync of the whole ring that covers this record too.
    private func makeDurableBeforePassing(_ r: UnsafeMutablePointer<pmll_record_t>) {
        if pool.memory.persistence.isPmem { try? persist(r) }
    }

    /// Moves `serving` from `s` to `s + 1` and wakes the waiter of ticket `s + 1`, and when
    /// operations are short the one of `s + 2`, now next in line (it spins for its turn).
    /// False if `serving` was not `s`.
    private func pass(_ s: UInt64) -> Bool {
        var expected = s
        guard pmll_cas64(&head.pointee.serving, &expected, s + 1) != 0 else { return false }
        // Processes of builds before the turn words sleep on `serving_word`: bumping it makes
        // their next sleep return at once; they are not woken (they look again at their
        // owner-check interval). Upgrade every process that shares a pool.
        _ = pmll_add32(pmll_queue_serving_word(head), 1)
        bumpTurn(s + 1)
        if operationsAreShort { bumpTurn(s + 2) }
        return true
    }

    private func bumpTurn(_ ticket: UInt64) {
        _ = pmll_wakeword_bump(pmll_queue_turn_word(head, ticket))
    }

    /// Gives up a ticket that has not run.
    package func void(_ ticket: UInt64) {
        let r = record(ticket)
        // Without the steps, nothing else says it was ever submitted. Appended first, as an
        // operation's end is (``finish(_:succeeded:error:)``); only a waiter passing it can
        // change a queued record of ours meanwhile, and says so in its own record.
        let now = UInt64(Clock.realtimeNanoseconds)
        if pmll_load32(pmll_record_state(r)) == PMLL_RECORD_QUEUED {
            pool.audit(.queueFail, .failed, at: Int64(now)) { text in
                describe(ticket, r, &text)
                text.add(": never ran (gave up waiting for its turn)")
                submittedAt(r, &text)
            }
        }
        var expected = PMLL_RECORD_QUEUED
        if pmll_cas32(pmll_record_state(r), &expected, PMLL_RECORD_VOID) != 0 {
            pmll_store32(pmll_record_passed(r), PMLL_PASSED_NONE)
            r.pointee.finished_ns = now
            try? persist(r)
        }
        if pmll_load64_acquire(&head.pointee.serving) == ticket { advance(from: ticket) }
    }

    // MARK: running

    /// Starts an attempt. The first attempt of a queued operation starts only if its ticket was
    /// not passed meanwhile (its process stopped when its turn came): then ``PassedWhileStopped``.
    package func begin(_ ticket: UInt64, attempt: UInt32) throws {
        let r = record(ticket)
        if attempt == 1 {
            var expected = PMLL_RECORD_QUEUED
            if pmll_cas32(pmll_record_state(r), &expected, PMLL_RECORD_RUNNING) == 0 && expected == PMLL_RECORD_VOID {
                // Seen: from now on a submitter may reuse the slot.
                var unseen = PMLL_PASSED_UNSEEN
                _ = pmll_cas32(pmll_record_passed(r), &unseen, PMLL_PASSED_SEEN)
                throw PassedWhileStopped(ticket: ticket)
            }
            // Running: no longer anyone's to pass, whichever build looks at the slot next.
            pmll_store32(pmll_record_passed(r), PMLL_PASSED_NONE)
        }
        r.pointee.attempts = attempt
        if attempt == 1 { r.pointee.started_ns = UInt64(Clock.realtimeNanoseconds) }
        pmll_store32(pmll_record_state(r), PMLL_RECORD_RUNNING)
        try persist(r)
        if pool.auditQueueSteps { pool.audit(.queueStart) { describe(ticket, r, &$0); $0.add(" attempt "); $0.add(UInt64(attempt)) } }
    }

    package func noteRetry(_ ticket: UInt64, error: String) {
        writeFixedCString(error, into: &record(ticket).pointee.error)
        pmll_add64(&head.pointee.retried, 1)
        telemetry.retries.increment()
        let r = record(ticket)
        pool.audit(.queueRetry, .failed) { text in
            describe(ticket, r, &text)
            text.add(" attempt ")
            text.add(UInt64(r.pointee.attempts))
            text.add(": ")
            text.add(error)
        }
    }

    /// How audit records name an operation (`queue 'NAME' ticket N kind 'KIND'`), written into
    /// a record, the kind read from the operation's record.
    func describe(_ ticket: UInt64, _ r: UnsafeMutablePointer<pmll_record_t>, _ text: inout AuditText) {
        text.add("queue '")
        nameBytes.withUnsafeBytes { text.add($0) }
        text.add("' ticket ")
        text.add(ticket)
        text.add(" kind '")
        // In place: a copy of the 64-byte field and a scan through a closure cost more than
        // the rest of the record.
        text.add(cString: UnsafeRawPointer(r) + MemoryLayout<pmll_record_t>.offset(of: \.kind)!, capacity: MemoryLayout.size(ofValue: r.pointee.kind))
        text.add("'")
    }

    /// When an operation that ended without its steps recorded was submitted and started
    /// (CLOCK_REALTIME ns, as the records' `time_ns`), so that its one record says it all.
    func submittedAt(_ r: UnsafeMutablePointer<pmll_record_t>, _ text: inout AuditText) {
        text.add(", submitted at ")
        text.add(r.pointee.submitted_ns)
        if r.pointee.started_ns != 0 {
            text.add(", started at ")
            text.add(r.pointee.started_ns)
        }
    }

    /// Records the final state and hands the turn on; returns once the final state is durable.
    ///
    /// On pmem the record is flushed before the pass, so the next operation never starts
    /// before this one's end is durable. On an msync pool the turn is passed first and the
    /// barrier runs beside the next operation's `begin`: that operation's own barrier, an
    /// msync of the whole ring started after the pass, makes this record durable too (msync
    /// writes back every dirty page of the range and waits for pages already being written),
    /// so its body still runs only after this end is durable. What a power loss can now leave
    /// is both records running, the next one's body not begun: recovery handles each as an
    /// operation interrupted before its end. The handoff no longer waits for a disk barrier.
    package func finish(_ ticket: UInt64, succeeded: Bool, error: String) throws(PMLLError) {
        let r = record(ticket)
        let now = UInt64(Clock.realtimeNanoseconds)
        let wait = r.pointee.started_ns > r.pointee.submitted_ns ? r.pointee.started_ns - r.pointee.submitted_ns : 0
        let run = now > r.pointee.started_ns ? now - r.pointee.started_ns : 0
        // The operation's one audit record (unless its steps are recorded), before its final
        // state: killed after that state and before an append, it would leave no record at
        // all. Killed between the two, the log says it ended and the queue, finding it
        // running with its owner dead, abandons it: both true, nothing unsaid.
        pool.audit(succeeded ? .queueComplete : .queueFail, succeeded ? .ok : .failed, at: Int64(now)) { text in
            describe(ticket, r, &text)
            text.add(" attempt ")
            text.add(UInt64(r.pointee.attempts))
            text.add(", waited ")
            text.add(wait)
            text.add(" ns, ran ")
            text.add(run)
            text.add(" ns")
            if !succeeded { text.add(": "); text.add(error) }
        }
        r.pointee.finished_ns = now
        // Not left eligible for a build that reuses the slot without setting the word.
        pmll_store32(pmll_record_passed(r), PMLL_PASSED_NONE)
        if !succeeded { writeFixedCString(error, into: &r.pointee.error) }
        pmll_store32(pmll_record_state(r), succeeded ? PMLL_RECORD_SUCCEEDED : PMLL_RECORD_FAILED)
        if succeeded { pmll_add64(&head.pointee.completed, 1) } else { pmll_add64(&head.pointee.failed, 1) }
        QueueStatistics.record(head, wait: wait, run: run)
        // Only the finisher writes it (turns serialise them, and it is written before the
        // pass); a torn or stale value only changes whether the next waiter spins.
        let recent = pmll_load64(&head.pointee.recent_run_ns)
        pmll_store64(&head.pointee.recent_run_ns, recent - recent / 8 + min(run, 1 << 40) / 8)
        CrashPoint.hit("queue.ended")
        let passFirst = persistent && !pool.memory.persistence.isPmem
        if passFirst { advance(from: ticket) }
        CrashPoint.hit("queue.end-barrier")
        do {
            defer { if !passFirst { advance(from: ticket) } }
            try persist(r)
        }
        (succeeded ? telemetry.completed : telemetry.failed).increment()
        telemetry.waitDuration.recordNanoseconds(Int64(clamping: wait))
        telemetry.runDuration.recordNanoseconds(Int64(clamping: run))
        CrashPoint.hit("queue.finished")
    }

    // MARK: exclusive access (recovery)

    /// Runs `body` with the submit lock held and the queue drained: no operation runs or
    /// waits, and none can be submitted until `body` returns.
    package func exclusive<R>(deadline: Int64, _ body: () async throws -> R) async throws -> R {
        _ = try await pool.acquireAsync(index: submitLock, deadline: deadline)
        defer { pool.release(index: submitLock) }
        let end = pmll_load64_acquire(&head.pointee.next_ticket)
        if end > 0 { try await waitForServing(atLeast: end, deadline: deadline, ticket: end) }
        return try await body()
    }
}

/// A queued operation's ticket was passed while its process was stopped; the operation is
/// submitted again (``HardenedQueue/execute(kind:payload:timeout:retry:onError:isolation:_:)``).
package struct PassedWhileStopped: Error {
    package let ticket: UInt64
}
