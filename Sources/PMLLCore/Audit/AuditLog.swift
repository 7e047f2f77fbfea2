import CPMLL
#if canImport(Glibc)
import Glibc
#endif

extension Pool {
    /// Appends one audit record: who (this participant), what, on which object, how it ended.
    /// Nothing when the pool has no audit ring. Never fails the caller's operation: if the
    /// ring stays full (its files cannot be written), the record is given up after a bounded
    /// wait, and the number it took is drained as a visible gap.
    package func audit(_ event: AuditEvent, _ outcome: AuditOutcome = .ok, _ object: @autoclosure () -> String) {
        guard let ring = auditRing else { return }
        let text = object()
        for _ in 0..<4 {
            let seq = ring.reserve()
            if !ring.hasRoom(for: seq) && !waitForRoom(ring, seq) {
                Self.logger.error("audit ring full and not draining: record given up", metadata: ["path": "\(path)", "event": "\(event)"])
                return
            }
            if ring.write(seq, token: token, pid: ProcessIdentity.pid, uid: ProcessIdentity.effectiveUID, comm: auditCommand,
                          event: event, outcome: outcome, text: text) { break }
        }
        if ring.backlog >= ring.count / 2 {
            do { try auditDrain(wait: false) } catch {
                Self.logger.warning("could not drain the audit ring", metadata: ["path": "\(path)", "error": "\(error)"])
            }
        }
    }

    /// Drains until `seq` has a slot, for at most about five seconds.
    private func waitForRoom(_ ring: AuditRing, _ seq: UInt64) -> Bool {
        let deadline = Clock.monotonicNanoseconds + 5_000_000_000
        while !ring.hasRoom(for: seq) {
            do { try auditDrain(wait: true) } catch {
                Self.logger.warning("could not drain the audit ring", metadata: ["path": "\(path)", "error": "\(error)"])
            }
            if ring.hasRoom(for: seq) { return true }
            if Clock.monotonicNanoseconds > deadline { return false }
            usleep(1000)
        }
        return true
    }

    /// Moves the audit ring's complete records into the audit files; returns how many.
    @discardableResult
    package func auditDrain(wait: Bool) throws(PMLLError) -> Int {
        guard let ring = auditRing else { return 0 }
        let drain = AuditDrain(ring: ring, poolPath: path, fd: fd.rawValue, persistence: memory.persistence,
                               isAlive: { [processes] in processes.isAlive($0) }, fileBytes: auditFileBytes,
                               groupShared: memory.header.pointee.flags & PMLL_POOL_FLAG_GROUP_SHARED != 0)
        return try drain.drain(wait: wait)
    }
}
