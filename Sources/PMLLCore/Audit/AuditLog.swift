import CPMLL
#if canImport(Glibc)
import Glibc
#endif

extension Pool {
    /// Appends one audit record: who (this participant), what, on which object, how it ended.
    /// Nothing when the pool has no audit ring. Never fails the caller's operation: if the
    /// ring stays full (its files cannot be written) for about five seconds, the record is
    /// dropped, logged, and counted in a record appended as soon as there is room again.
    package func audit(_ event: AuditEvent, _ outcome: AuditOutcome = .ok, _ object: @autoclosure () -> String) {
        guard auditRing != nil else { return }
        let text = object()
        audit(event, outcome) { $0.add(text) }
    }

    /// ``audit(_:_:_:)`` with the object written into the record by `fill`, for the hot paths
    /// (queue operations): no String is built. `time`: when it happened (CLOCK_REALTIME ns),
    /// when the caller has just read the clock for its own record; 0: now.
    package func audit(_ event: AuditEvent, _ outcome: AuditOutcome = .ok, at time: Int64 = 0, fill: (inout AuditText) -> Void) {
        guard let ring = auditRing else { return }
        reportDroppedAuditRecords(ring)
        if !append(ring, event, outcome, time, fill) {
            // Logged once per stall (the count reaches the log in the gap record).
            if auditDropped.add(1, ordering: .relaxed).oldValue == 0 {
                Self.logger.error("audit ring full and not draining: records dropped until it drains", metadata: ["path": "\(path)", "event": "\(event)"])
            }
        }
        let backlog = ring.backlog
        if backlog >= ring.count / 4 {
            // The drainer thread takes it; past three quarters (it lags, or could not start),
            // the appender drains too, unless a drain is under way (its own thread's or
            // another process's). With more processes than cores a woken drainer thread waits
            // for a core, and taking one from a process that holds a lock stalls every other
            // process (4 processes on 2 cores: 20 % fewer commits a second, measured); the
            // appender drains between operations, holding nothing.
            _ = kickAuditDrainer(urgent: backlog >= ring.count / 2)
            if backlog >= ring.count / 4 * 3 && !ring.drainingElsewhere {
                do { try auditDrain(until: 0) } catch {
                    Self.logger.warning("could not drain the audit ring", metadata: ["path": "\(path)", "error": "\(error)"])
                }
            }
        }
    }

    /// Maps the ring pages of this process's next records for writing, once, for a thread that
    /// is about to wait anyway (a waiter watching a lock's owner): the first record a process
    /// appends otherwise faults on its slot's page, about 12 µs of a takeover (Docs/Benchmarks.md).
    package func prepareAuditAppend() {
        guard let ring = auditRing, !auditRingMapped.exchange(true, ordering: .relaxed) else { return }
        ring.mapForWriting()
    }

    /// A gap record for the records this process dropped, once there is room. False if
    /// some are still unreported.
    @discardableResult
    package func reportDroppedAuditRecords(_ ring: AuditRing) -> Bool {
        let dropped = auditDropped.load(ordering: .relaxed)
        guard dropped > 0 else { return true }
        guard append(ring, .gap, .lost, 0, { $0.add(UInt64(dropped)); $0.add(" audit record(s) of this process dropped: the ring was full and could not be drained") }) else { return false }
        auditDropped.subtract(dropped, ordering: .relaxed)
        return true
    }

    /// Wakes this process's drainer thread, starting it the first time; false if it could not start.
    private func kickAuditDrainer(urgent: Bool) -> Bool {
        auditDrainer.kick({ makeAuditDrain() }, gate: auditGate, urgent: urgent)
    }

    private func append(_ ring: AuditRing, _ event: AuditEvent, _ outcome: AuditOutcome, _ time: Int64, _ fill: (inout AuditText) -> Void) -> Bool {
        var deadline: Int64?
        while true {
            if let seq = ring.reserve(guess: auditNextGuess.load(ordering: .relaxed)) {
                CrashPoint.hit("audit.reserved")
                auditNextGuess.store(seq + 1, ordering: .relaxed)
                if ring.write(seq, token: token, pid: processID, uid: auditUID, comm: auditCommand,
                              event: event, outcome: outcome, time: time, fill: fill) { return true }
                continue   // the drainer gave the number up (this thread stalled): take another
            }
            // Full: drain (or wait for the process draining), for about five seconds at most,
            // and not again while the drain stays where it was when we last gave up (a
            // drainer stopped while it holds the drain would otherwise cost every operation
            // of every process five seconds).
            let stalledAt = auditStalledAt.load(ordering: .relaxed)
            if ring.drained == stalledAt {
                // One try without waiting: the holder may have died (its lock went with it).
                _ = try? auditDrain(until: 0)
                if ring.drained == stalledAt { return false }
                continue
            }
            let now = Clock.monotonicNanoseconds
            if deadline == nil { deadline = now + 5_000_000_000 }
            if now > deadline! {
                auditStalledAt.store(ring.drained, ordering: .relaxed)
                return false
            }
            if ring.drainingElsewhere {
                // A drain is under way (this process's drainer thread, or another process): it
                // frees room a step at a time (AuditDrain.chunkBytes), so wait for the next step,
                // not for the whole drain behind its lock (a full ring's drain, about 0.6 ms on
                // tmpfs, was most of the cost of a queue operation's record in the runs where
                // the drainer fell behind). The hint of a drainer stopped while it holds the
                // drain is older than a second, and then the wait below, bounded by the
                // deadline, takes over.
                let from = ring.drained
                while ring.drained == from && ring.drainingElsewhere && Clock.monotonicNanoseconds < deadline! { usleep(20) }
                continue
            }
            do { try auditDrain(until: deadline!) } catch {
                Self.logger.warning("could not drain the audit ring", metadata: ["path": "\(path)", "error": "\(error)"])
            }
            if ring.backlog >= ring.count { usleep(1000) }
        }
    }

    /// Moves the audit ring's complete records into the audit files; returns how many, or
    /// nil if another process held the drain until `deadline` (see ``AuditDrain/drain(until:)``).
    /// One drainer per pool: the AUDIT byte lock between processes, a mutex between threads
    /// (they share the descriptor, so the byte lock does not exclude them).
    @discardableResult
    package func auditDrain(until deadline: Int64) throws(PMLLError) -> Int? {
        guard let drain = makeAuditDrain() else { return 0 }
        return try auditGate.run(wait: deadline > 0) { (session) throws(PMLLError) in try drain.drain(until: deadline, session: &session) }
    }

    private func makeAuditDrain() -> AuditDrain? {
        guard let ring = auditRing else { return nil }
        return AuditDrain(ring: ring, poolPath: path, fd: fd.rawValue, persistence: memory.persistence,
                          isAlive: { [processes] in processes.isAlive($0) }, fileBytes: auditFileBytes,
                          groupShared: memory.header.pointee.flags & PMLL_POOL_FLAG_GROUP_SHARED != 0)
    }
}

extension AuditRing {
    /// An append by a process that is not a participant yet: what a volatile reset finds (the
    /// operations of processes that are all gone). The record names this process.
    package static func appendDuringReset(_ memory: PoolMemory, _ event: AuditEvent, _ outcome: AuditOutcome, _ text: String) {
        guard let ring = try? AuditRing(memory: memory, path: ""), let seq = ring.reserve() else { return }
        _ = ring.write(seq, token: OwnerToken(rawValue: 0), pid: ProcessIdentity.pid, uid: ProcessIdentity.effectiveUID,
                       comm: AuditRing.CommandName(Array(ProcessIdentity.commandName().utf8)), event: event, outcome: outcome) { $0.add(text) }
    }
}
