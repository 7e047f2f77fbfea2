import CPMLL
#if canImport(Glibc)
import Glibc
#endif

/// Moves complete records from the pool's audit ring, in order, into the hash-chained files
/// beside the pool (`POOL.audit/000001.log`, ...), under the pool's AUDIT byte lock so that
/// one process drains at a time. A slot whose writer died becomes a gap record, so the chain
/// never breaks and the loss is visible. Files are written, then made durable, then the ring's
/// `drained` and `head_hash` move: a drainer killed in between leaves records in the file that
/// the next drainer finds (it reads the file's last line) and does not write again.
package struct AuditDrain {
    package let ring: AuditRing
    package let poolPath: String
    package let fd: Int32
    package let persistence: Persistence
    /// Whether a participant is still alive (nil: nobody is, as during a volatile reset).
    package let isAlive: ((OwnerToken) -> Bool)?
    package let fileBytes: Int
    package let groupShared: Bool

    package init(ring: AuditRing, poolPath: String, fd: Int32, persistence: Persistence, isAlive: ((OwnerToken) -> Bool)?, fileBytes: Int, groupShared: Bool) {
        self.ring = ring
        self.poolPath = poolPath
        self.fd = fd
        self.persistence = persistence
        self.isAlive = isAlive
        self.fileBytes = fileBytes
        self.groupShared = groupShared
    }

    /// Lines written (and made durable, and `drained` moved) at a time within one drain: an
    /// appender that finds the ring full waits for one such step, not for the whole drain (a
    /// full 1,024-slot ring was about 0.6 ms of drain on tmpfs; a step is about 240 records).
    static let chunkBytes = 64 << 10

    private var directory: String { AuditLine.directory(ofPool: poolPath) }
    private var fileMode: mode_t { groupShared ? 0o660 : 0o600 }

    /// Drains what can be drained now; returns how many records went to the files, or nil if
    /// another process drained (or held the drain) until `deadline` (CLOCK_MONOTONIC ns; 0:
    /// no wait; `.max`: as long as it takes).
    ///
    /// A bounded wait polls: the kernel's waiting lock has no timeout, and a holder that was
    /// stopped (SIGSTOP, Ctrl-Z) keeps the lock for as long as it stays stopped. What is not
    /// drained stays in the ring, in the pool, for the next drain.
    @discardableResult
    package func drain(until deadline: Int64, session: inout AuditDrainSession) throws(PMLLError) -> Int? {
        var pause: UInt32 = 100
        while true {
            let rc = pmll_ofd_lock(fd, PMLL_LOCKBYTE_AUDIT, PMLL_RANGE_EXCLUSIVE, deadline == .max ? 1 : 0)
            if rc == -EINTR { continue }
            if rc == -EAGAIN || rc == -EACCES {
                if Clock.monotonicNanoseconds >= deadline { return nil }
                usleep(pause)
                pause = min(pause * 2, 5000)
                continue
            }
            try SystemCall.check("fcntl(F_OFD_SETLK) audit", rc)
            break
        }
        ring.markDraining(true)
        defer {
            ring.markDraining(false)
            _ = pmll_ofd_lock(fd, PMLL_LOCKBYTE_AUDIT, PMLL_RANGE_UNLOCK, 0)
        }
        return try drainLocked(&session)
    }

    /// Where the chain stands when a drain begins: the file to append to and the last record
    /// the files hold. From the session when nothing changed since its last drain, else from
    /// the ring and the file itself.
    private func start(_ session: inout AuditDrainSession) throws(PMLLError) -> (file: AuditOpenFile, fileIndex: UInt64, seq: UInt64, head: [UInt8]) {
        let h = ring.header
        if let resumed = session.resume(h) { return resumed }
        try makeDirectory()
        if h.pointee.file_index == 0 { try setAsideStaleFiles() }
        var seq = h.pointee.drained
        var head = withUnsafeBytes(of: h.pointee.head_hash) { Array($0) }
        let fileIndex = max(1, h.pointee.file_index)
        let file = try openFile(fileIndex, previousSeq: seq - 1, previousHash: head, create: h.pointee.file_index == 0)
        do throws(PMLLError) {
            var adopted = false
            if let (lastSeq, lastHash) = try reconcile(file), lastSeq >= seq {
                // The files are ahead of the ring: a drainer killed before it could say what it
                // wrote, or a pool restored (or copied) beside newer files. Numbers continue after
                // theirs; records the ring holds below that are already in the files, or belong
                // to another copy of the pool.
                seq = lastSeq + 1
                head = lastHash
                adopted = true
                pmll_max64(pmll_audit_next_seq(h), seq)
            }
            if h.pointee.file_index == 0 || adopted { try publish(seq: seq, head: head, file: fileIndex) }
        } catch {
            close(file.fd)
            throw error
        }
        return (file, fileIndex, seq, head)
    }

    private func drainLocked(_ session: inout AuditDrainSession) throws(PMLLError) -> Int {
        var (file, fileIndex, seq, head) = try start(&session)
        // Kept for the next drain only if this one ends as it should: after a failure the next
        // drain starts from the ring and the file again.
        var finished = false
        defer {
            if finished { session.keep(file, fileIndex: fileIndex, seq: seq, head: head) } else if file.fd >= 0 { close(file.fd) }
        }
        let end = ring.nextSeq
        session.lines.removeAll()
        var hash = [UInt8](repeating: 0, count: 32)
        var drainedCount = 0
        let now = Clock.realtimeNanoseconds
        while true {
            guard appendLine(seq, end: end, now: now, previous: head, hash: &hash, to: &session.lines) else { break }
            swap(&head, &hash)
            seq += 1
            drainedCount += 1
            if file.size + session.lines.count >= fileBytes || session.lines.count >= Self.chunkBytes {
                try append(session.lines.bytes, to: &file)
                session.lines.removeAll()
                try publish(seq: seq, head: head, file: fileIndex)
                if file.size >= fileBytes {
                    close(file.fd)
                    file.fd = -1   // the deferred close must not close it again if the next open fails
                    fileIndex += 1
                    file = try openFile(fileIndex, previousSeq: seq - 1, previousHash: head, create: true)
                    try publish(seq: seq, head: head, file: fileIndex)
                }
            }
        }
        if !session.lines.isEmpty {
            try append(session.lines.bytes, to: &file)
            session.lines.removeAll()
            try publish(seq: seq, head: head, file: fileIndex)
        }
        if isAlive == nil {
            // Nobody else is attached: nothing is outstanding any more.
            pmll_store64_release(pmll_audit_next_seq(ring.header), seq)
        }
        finished = true
        return drainedCount
    }

    /// Appends the line of record `seq` (or of a gap record in its place), chained to
    /// `previous`, to `out`, and its hash to `hash`; false to stop here (its writer is still
    /// at work, or nothing more was appended).
    private func appendLine(_ seq: UInt64, end: UInt64, now: Int64, previous: [UInt8], hash: inout [UInt8],
                            to out: inout AuditLineBuffer) -> Bool {
        let s = ring.slot(seq)
        // Past `end`, only a volatile reset looks (at slots a power loss may have kept while
        // losing the counter); otherwise a slot there is a record whose writer is still at work.
        if (seq < end || isAlive == nil) && ring.isComplete(seq) {
            let event = AuditEvent(rawValue: s.pointee.event)?.staticName ?? "unknown"
            let outcome = AuditOutcome(rawValue: s.pointee.outcome)?.staticName ?? "unknown"
            let line = out.next
            let length = hash.withUnsafeMutableBufferPointer { h in
                previous.withUnsafeBufferPointer { p in
                    event.withUTF8Buffer { e in
                        outcome.withUTF8Buffer { o in
                            pmll_audit_format_line(line, s, seq,
                                                   UnsafeRawPointer(e.baseAddress!).assumingMemoryBound(to: CChar.self), e.count,
                                                   UnsafeRawPointer(o.baseAddress!).assumingMemoryBound(to: CChar.self), o.count,
                                                   p.baseAddress!, h.baseAddress!, ring.binaryNumbers ? 1 : 0)
                        }
                    }
                }
            }
            out.added(length)
            return true
        }
        guard let body = gapBody(seq, end: end, now: now) else { return false }
        hash = AuditLine.chain(previous: previous, body: body)
        out.append(body)
        out.append(AuditLine.hashTail(hash))
        return true
    }

    /// A gap record for `seq` if its writer is gone, or nil to stop here.
    private func gapBody(_ seq: UInt64, end: UInt64, now: Int64) -> [UInt8]? {
        let s = ring.slot(seq)
        guard seq < end else { return nil }
        let state = pmll_load64_acquire(pmll_audit_slot_state(s))
        let phase = UInt32(state & 3), stateSeq = state >> 2
        let h = ring.header
        func gap(_ why: String, writer: Bool) -> [UInt8] {
            h.pointee.gaps &+= 1
            var f = writer ? fields(s, seq: seq) : AuditLine.Fields(seq: seq, timeNanoseconds: now, pid: 0, uid: 0, command: "", event: "", object: "", outcome: "")
            f.timeNanoseconds = now
            f.event = AuditEvent.gap.description
            f.outcome = AuditOutcome.lost.description
            f.object = "record \(seq) lost: " + why
            return AuditLine.body(f)
        }
        func markGap(_ expected: UInt64) -> Bool {
            var e = expected
            return pmll_cas64(pmll_audit_slot_state(s), &e, AuditRing.state(seq, PMLL_AUDIT_GAP)) != 0
        }
        if stateSeq == seq && phase == PMLL_AUDIT_GAP { return gap("its writer gave it up", writer: false) }
        if stateSeq == seq && phase == PMLL_AUDIT_COMPLETE { return gap("its slot in the ring is damaged", writer: false) }
        if stateSeq == seq && phase == PMLL_AUDIT_CLAIMED {
            let token = OwnerToken(rawValue: s.pointee.owner_token)
            if let isAlive, isAlive(token) { return nil }
            guard markGap(state) else { return nil }
            return gap("its writer (pid \(s.pointee.pid)) died while appending it", writer: true)
        }
        // Reserved, never claimed.
        if isAlive != nil {
            if h.pointee.stall_seq != seq {
                h.pointee.stall_seq = seq
                h.pointee.stall_since_ns = now
                return nil
            }
            guard now - h.pointee.stall_since_ns >= AuditRing.stallNanoseconds else { return nil }
        }
        guard markGap(state) else { return nil }
        return gap("its writer took the number and never wrote it (it died, or stalled for \(AuditRing.stallNanoseconds / 1_000_000_000) s)", writer: false)
    }

    private func fields(_ s: UnsafeMutablePointer<pmll_audit_slot_t>, seq: UInt64) -> AuditLine.Fields {
        var object = [UInt8](repeating: 0, count: Int(PMLL_AUDIT_LINE_MAX))
        let length = object.withUnsafeMutableBytes { pmll_audit_object_text($0.baseAddress!.assumingMemoryBound(to: CChar.self), s, ring.binaryNumbers ? 1 : 0) }
        let text = String(decoding: object.prefix(length), as: UTF8.self)
        let comm = withUnsafeBytes(of: s.pointee.comm) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return AuditLine.Fields(seq: seq, timeNanoseconds: s.pointee.time_ns, pid: s.pointee.pid, uid: s.pointee.uid, command: comm,
                                event: AuditEvent(rawValue: s.pointee.event)?.description ?? "event-\(s.pointee.event)",
                                object: text, outcome: AuditOutcome(rawValue: s.pointee.outcome)?.description ?? "outcome-\(s.pointee.outcome)")
    }

    /// A new pool's first drain: audit files already in its directory belong to an earlier
    /// pool of the same name (deleted and created again). They are kept, renamed aside.
    private func setAsideStaleFiles() throws(PMLLError) {
        guard let dir = opendir(directory) else { return }
        var stale = false
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasSuffix(".log") { stale = true; break }
        }
        closedir(dir)
        guard stale else { return }
        let aside = directory + ".before-" + String(Clock.realtimeNanoseconds / 1_000_000_000)
        guard rename(directory, aside) == 0 else { throw SystemCall.fileError(.current, path: directory, operation: "set aside the audit files of an earlier pool") }
        Pool.logger.notice("audit files of an earlier pool of this name set aside", metadata: ["moved to": "\(aside)"])
        try makeDirectory()
    }

    /// The audit directory. For a group-shared pool: the pool file's group and mode 2770
    /// whatever the umask, so that every member of the group can drain (new files inherit
    /// the group through the set-group-ID bit).
    private func makeDirectory() throws(PMLLError) {
        if mkdir(directory, groupShared ? 0o770 : 0o700) != 0 {
            guard errno == EEXIST else { throw SystemCall.fileError(.current, path: directory, operation: "create the audit directory") }
            return
        }
        if groupShared { shareWithPoolGroup(path: directory, fd: -1, mode: 0o2770) }
    }

    private func shareWithPoolGroup(path: String, fd: Int32, mode: mode_t) {
        var pool = stat()
        guard fstat(self.fd, &pool) == 0 else { return }
        if fd >= 0 {
            _ = fchown(fd, uid_t.max, pool.st_gid)
            _ = fchmod(fd, mode)
        } else {
            _ = chown(path, uid_t.max, pool.st_gid)
            _ = chmod(path, mode)
        }
    }

    /// Opens file `index` for appending; a new one (or one left with only part of its header
    /// by a killed drainer) starts with its header line, made durable with its directory entry.
    private func openFile(_ index: UInt64, previousSeq: UInt64, previousHash: [UInt8], create: Bool) throws(PMLLError) -> AuditOpenFile {
        let path = directory + "/" + AuditLine.fileName(index)
        let fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC | (create ? O_TRUNC : 0), fileMode)
        guard fd >= 0 else { throw SystemCall.fileError(.current, path: path, operation: "open the audit file") }
        var st = stat()
        fstat(fd, &st)
        var file = AuditOpenFile(fd: fd, size: Int(st.st_size), path: path)
        if file.size == 0 {
            if groupShared { shareWithPoolGroup(path: path, fd: fd, mode: 0o660) }
            do throws(PMLLError) {
                try append(AuditLine.fileHeader(index: index, previousSeq: previousSeq, previousHash: previousHash, pool: poolPath), to: &file)
                let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                if dfd >= 0 { _ = fsync(dfd); close(dfd) }
            } catch {
                close(fd)
                throw error
            }
        }
        return file
    }

    /// The last record the file holds (number and hash); a torn last line (a drainer killed
    /// mid-write) is cut off first.
    private func reconcile(_ file: AuditOpenFile) throws(PMLLError) -> (UInt64, [UInt8])? {
        let tail = min(file.size, 16 << 10)   // a line is at most about 3 KiB
        var bytes = [UInt8](repeating: 0, count: tail)
        let got = bytes.withUnsafeMutableBytes { pread(file.fd, $0.baseAddress, tail, off_t(file.size - tail)) }
        guard got == tail else { throw SystemCall.fileError(.current, path: file.path, operation: "read the audit file") }
        guard let lastNewline = bytes.lastIndex(of: 10) else { return nil }
        if lastNewline != bytes.count - 1 {
            guard ftruncate(file.fd, off_t(file.size - tail + lastNewline + 1)) == 0 else {
                throw SystemCall.fileError(.current, path: file.path, operation: "cut the torn last line of the audit file")
            }
        }
        let lineStart = (bytes[..<lastNewline].lastIndex(of: 10) ?? -1) + 1
        let line = bytes[lineStart..<lastNewline]
        guard let seq = AuditLine.integer("seq", in: line), let hashText = AuditLine.plainString("hash", in: line),
              let hash = AuditLine.unhex(hashText), hash.count == 32 else { return nil }
        return (UInt64(seq), hash)
    }

    private func append(_ bytes: [UInt8], to file: inout AuditOpenFile) throws(PMLLError) {
        let failure = bytes.withUnsafeBytes { raw -> PMLLError? in
            do throws(PMLLError) { try append(raw, to: &file) } catch { return error }
            return nil
        }
        if let failure { throw failure }
    }

    private func append(_ bytes: UnsafeRawBufferPointer, to file: inout AuditOpenFile) throws(PMLLError) {
        var done = 0
        while done < bytes.count {
            let n = write(file.fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw SystemCall.fileError(.current, path: file.path, operation: "write the audit file") }
            done += n
        }
        CrashPoint.hit("audit.written")
        guard fdatasync(file.fd) == 0 else { throw SystemCall.fileError(.current, path: file.path, operation: "fdatasync the audit file") }
        file.size += bytes.count
    }

    /// Records below `seq` are durable in the files: say so in the ring.
    private func publish(seq: UInt64, head: [UInt8], file: UInt64) throws(PMLLError) {
        let h = ring.header
        withUnsafeMutableBytes(of: &h.pointee.head_hash) { $0.copyBytes(from: head) }
        h.pointee.file_index = file
        pmll_store64_release(&h.pointee.drained, seq)
        try persistence.persist(UnsafeRawPointer(h), MemoryLayout<pmll_audit_ring_t>.size, site: "audit.drained")
    }
}
