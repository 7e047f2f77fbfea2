import CPMLL
import PMLLCore
import PMLLFileBatches
import PMLLLocks
import PMLLQueues
import PMLLStore
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// What `backup` did.
public struct BackupReport: Codable, Sendable {
    public let source: String
    public let destination: String
    public let bytes: Int
    /// How long writers of the source were held off: from the first freezing lock taken to
    /// the last released (the copy of the mapping into memory).
    public let writersBlockedNanoseconds: Int64
    /// How long taking the freezing locks waited for holders to let go.
    public let freezeWaitNanoseconds: Int64
    /// File batches that were being applied at the moment of the copy: their journals are
    /// dropped from the copy (their trees are not in the pool; a restore must not undo them).
    public let fileBatchesDropped: Int
}

/// What `restore` did.
public struct RestoreReport: Codable, Sendable {
    public let source: String
    public let pool: String
    public let bytes: Int
    public let replacedExisting: Bool
}

extension Pool {
    /// Writes a consistent copy of this (live) pool to `destination`, atomically (a temporary
    /// file beside it, renamed into place), like SQLite's online backup or `mdb_copy`.
    ///
    /// Consistency: queue submissions (every queue's submit lock), commits (the store lock)
    /// and lock-table changes are held off while the mapping is copied into memory, so the
    /// copy holds one committed state of the store and of each queue's submissions. An
    /// operation still running (or finishing) during the copy is recorded as running in it,
    /// and a restore recovers it as abandoned, as after a crash at that moment. The copy is
    /// then written out, opened as a pool (which resets its volatile state: lock words,
    /// process table), stripped of the journals of file batches in progress, and checked.
    /// Writers wait only for the copy into memory (``BackupReport/writersBlockedNanoseconds``).
    public func backup(to destination: String, timeout: Duration = .seconds(30)) throws(PMLLError) -> BackupReport {
        let deadline = Pool.deadline(after: timeout)
        var length = 0, image = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 4096)
        defer { image.deallocate() }
        var asked: Int64 = 0, frozenAt: Int64 = 0, thawedAt: Int64 = 0
        // The file may grow between sizing the buffer and holding writers off: then again.
        for _ in 0..<8 where frozenAt == 0 {
            try memory.mapping.ensureMapped(upTo: try memory.mapping.fileSize() / PoolLayout.page * PoolLayout.page)
            length = memory.length
            image.deallocate()
            image = UnsafeMutableRawPointer.allocate(byteCount: length, alignment: 4096)
            // Fault the buffer and the mapping in first, so that writers wait for a plain
            // memory copy only.
            image.initializeMemory(as: UInt8.self, repeating: 0, count: length)
            memory.prefetch(0..<length)
            _ = pmll_prefault(memory.base, UInt64(length))
            asked = Clock.monotonicNanoseconds
            (frozenAt, thawedAt) = try withWritersHeldOff(deadline: deadline) { () throws(PMLLError) -> (Int64, Int64) in
                if store.exists, try store.refresh().end > length { return (0, 0) }
                let frozen = Clock.monotonicNanoseconds
                image.copyMemory(from: memory.base, byteCount: length)
                return (frozen, Clock.monotonicNanoseconds)
            }
        }
        // Eight growths while sizing a copy: as if the store lock could not be had.
        guard frozenAt != 0 else { throw .timeout(lock: "pmll:store", holder: nil) }
        if !memory.layout.auditRing.isEmpty {
            // Audit records not yet in the files stay with the live pool, which drains them:
            // the copy's ring starts empty (and opening it writes no audit files).
            let ring = (image + memory.layout.auditRing.lowerBound).assumingMemoryBound(to: pmll_audit_ring_t.self)
            ring.pointee.next_seq = ring.pointee.drained
            ring.pointee.stall_seq = 0
            let slots = UnsafeMutableRawPointer(ring + 1).assumingMemoryBound(to: pmll_audit_slot_t.self)
            let fits = (memory.layout.auditRing.count - MemoryLayout<pmll_audit_ring_t>.size) / MemoryLayout<pmll_audit_slot_t>.size
            for i in 0..<min(Int(ring.pointee.slot_count), fits) { slots[i].state = 0 }
        }
        var st = stat()
        _ = try SystemCall.libc("fstat") { fstat(fd.rawValue, &st) }
        let temporary: String
        do { temporary = try PoolImage.write(image, length: length, beside: destination, mode: st.st_mode & 0o7777) } catch {
            audit(.backup, .failed, "to '\(destination)': \(error)")
            throw error
        }
        do {
            let dropped = try PoolImage.settle(temporary, describedAs: destination)
            try PoolImage.rename(temporary, to: destination)
            audit(.backup, .ok, "to '\(destination)' (\(length) bytes, writers held off \((thawedAt - frozenAt) / 1000) µs)")
            return BackupReport(source: path, destination: destination, bytes: length,
                                writersBlockedNanoseconds: thawedAt - frozenAt,
                                freezeWaitNanoseconds: frozenAt - asked, fileBatchesDropped: dropped)
        } catch {
            unlink(temporary)
            audit(.backup, .failed, "to '\(destination)': \(error)")
            throw error
        }
    }

    /// A backup into `directory` named `POOLNAME.YYYYMMDDTHHMMSSZ.backup` (UTC), then removes
    /// all but the `keep` newest such backups of this pool there. Returns the report and the
    /// backups removed.
    public func backup(rotatingIn directory: String, keep: Int, timeout: Duration = .seconds(30)) throws(PMLLError) -> (BackupReport, removed: [String]) {
        guard keep >= 1 else { throw .invalidOptions(reason: "keep must be at least 1") }
        var st = stat()
        guard stat(directory, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
            throw .invalidPoolPath(path: directory, reason: "the backup directory does not exist")
        }
        let name = String(path.split(separator: "/").last ?? "pool")
        var target = directory + "/" + name + "." + Self.backupTimestamp() + ".backup"
        // Two backups in one second (a manual one beside a scheduled one) keep both.
        var n = 1
        while Glibc.access(target, F_OK) == 0 {
            n += 1
            target = directory + "/" + name + "." + Self.backupTimestamp() + "-\(n).backup"
        }
        let report = try backup(to: target, timeout: timeout)
        return (report, try Self.prune(directory, prefix: name + ".", keep: keep))
    }

    /// UTC, sortable: 20261201T224500Z.
    static func backupTimestamp() -> String {
        var now = time(nil)
        var parts = tm()
        gmtime_r(&now, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let n = strftime(&buffer, buffer.count, "%Y%m%dT%H%M%SZ", &parts)
        return String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Removes the oldest PREFIX*.backup files of `directory` beyond the `keep` newest.
    static func prune(_ directory: String, prefix: String, keep: Int) throws(PMLLError) -> [String] {
        guard let dir = opendir(directory) else { throw SystemCall.fileError(Errno(rawValue: errno), path: directory, operation: "read") }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix(prefix) && name.hasSuffix(".backup") { names.append(name) }
        }
        closedir(dir)
        let old = names.sorted().dropLast(keep)
        for name in old {
            guard unlink(directory + "/" + name) == 0 else {
                throw SystemCall.fileError(Errno(rawValue: errno), path: directory + "/" + name, operation: "remove")
            }
            // The audit files of a backup that was opened (checked, read) go with it.
            PoolImage.removeAuditDirectory(of: directory + "/" + name)
        }
        return old.map { directory + "/" + $0 }
    }

    /// Replaces the pool at `path` (nil: `$PMLL_POOL`, else the default) with a copy of the
    /// pool file `source`, after checking the copy in full; atomic (rename into place).
    /// Refuses with ``PMLLError/poolInUse(path:processes:)`` while any process has the pool
    /// open, and holds new openers off until the new file is in place.
    public static func restore(from source: String, to path: String? = nil) throws(PMLLError) -> RestoreReport {
        let target = PoolPath.resolve(path)
        let input = Glibc.open(source, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw SystemCall.fileError(Errno(rawValue: errno), path: source, operation: "open") }
        defer { close(input) }
        var st = stat()
        _ = try SystemCall.libc("fstat") { fstat(input, &st) }
        let length = Int(st.st_size)
        guard st.st_mode & S_IFMT == S_IFREG, length > 0 else { throw .notAPool(path: source) }
        let image = UnsafeMutableRawPointer.allocate(byteCount: length, alignment: 4096)
        defer { image.deallocate() }
        var done = 0
        while done < length {
            let n = pread(input, image + done, length - done, off_t(done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw SystemCall.fileError(Errno(rawValue: n < 0 ? errno : EIO), path: source, operation: "read") }
            done += n
        }
        let temporary = try PoolImage.write(image, length: length, beside: target, mode: st.st_mode & 0o7777)
        do {
            _ = try PoolImage.settle(temporary, describedAs: source)
            let replaced = try PoolImage.replace(target, with: temporary)
            return RestoreReport(source: source, pool: target, bytes: length, replacedExisting: replaced)
        } catch {
            unlink(temporary)
            throw error
        }
    }

    /// Runs `body` with queue submissions, commits and lock-table changes held off, taking
    /// the locks in the order the rest of the library takes them (a submitter may commit
    /// while holding its queue's submit lock, never the other way round).
    private func withWritersHeldOff<R>(deadline: Int64, _ body: () throws(PMLLError) -> R) throws(PMLLError) -> R {
        let submitLocks = try QueueTable(memory: memory, path: path).all().map { LockIndex($0.head.pointee.submit_lock) }
        var taken: [LockIndex] = []
        defer { for index in taken.reversed() { release(index: index) } }
        for index in submitLocks {
            _ = try acquire(index: index, deadline: deadline, cancellation: nil)
            taken.append(index)
        }
        if store.exists {
            let index = try storeLock()
            let grant = try acquire(index: index, deadline: deadline, cancellation: nil)
            taken.append(index)
            if grant.ownerDied || (0..<store.layout.logSlots).contains(where: { isPending(store.logHeader($0)) }) { try rollBackPending() }
        }
        var result: R?
        try tableCreation.withLock { _ throws(PMLLError) in
            try TableCreationLock.withHeld(fd: fd) { () throws(PMLLError) in result = try body() }
        }
        return result!
    }
}

/// Pool images on their way to becoming pool files: written beside their destination,
/// settled (opened as a pool, cleaned and checked), then renamed into place.
enum PoolImage {
    static func write(_ image: UnsafeRawPointer, length: Int, beside destination: String, mode: mode_t) throws(PMLLError) -> String {
        let temporary = destination + ".pmll-tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw SystemCall.fileError(Errno(rawValue: errno), path: temporary, operation: "create") }
        var done = 0
        var failure: Int32 = 0
        while done < length {
            let n = Glibc.write(fd, image + done, length - done)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { failure = n < 0 ? errno : EIO; break }
            done += n
        }
        if failure == 0 && fsync(fd) != 0 { failure = errno }
        // Its pages are clean now: out of the page cache with them, as the large folios that
        // big writes make (which would be written back whole at every msync once the copy is a
        // pool in use, PoolMapping), so that the pool's own mapping reads them in 4 KiB pages.
        if failure == 0 { _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) }
        close(fd)
        guard failure == 0 else {
            unlink(temporary)
            throw failure == ENOSPC ? .noSpace(path: temporary, reason: "the file system is full") : SystemCall.fileError(Errno(rawValue: failure), path: temporary, operation: "write")
        }
        return temporary
    }

    /// Opens the image as a pool without touching anything outside it (no file-batch
    /// recovery: the trees belong to the live pool), which resets its volatile state and
    /// rolls back an interrupted commit; drops the journals of batches in progress; checks it
    /// in full. Returns the number of journals dropped.
    static func settle(_ temporary: String, describedAs name: String) throws(PMLLError) -> Int {
        do {
            return try settleCopy(temporary, describedAs: name)
        } catch {
            // Name the file the user gave, not our temporary copy of it.
            switch error {
            case .notAPool: throw .notAPool(path: name)
            case .unsupportedFormatVersion(_, let found, let supported): throw .unsupportedFormatVersion(path: name, found: found, supported: supported)
            case .incompatibleLayout(_, let reason): throw .incompatibleLayout(path: name, reason: reason)
            case .corruptPool(let path, let reason) where path == temporary: throw .corruptPool(path: name, reason: "its copy fails to open: \(reason)")
            case .corruptRecord, .transactionRecoveryFailed: throw .corruptPool(path: name, reason: "its copy fails to open: \(error)")
            default: throw error
            }
        }
    }

    private static func settleCopy(_ temporary: String, describedAs name: String) throws(PMLLError) -> Int {
        var options = PoolOptions()
        options.create = false
        options.recordsAudit = false
        let pool = try Pool.attach(path: temporary, options: options, steps: Pool.attachSteps)
        try pool.attachStore()
        try pool.storeReady()
        var dropped = 0
        if pool.store.exists {
            let journals = try pool.committedKeys(prefix: Pool.batchPrefix, skippingDamaged: true)
            dropped = journals.count
            if !journals.isEmpty {
                try pool.internalTransaction { tx throws(PMLLError) in for key in journals { try tx.deleteInternal(key) } }
            }
        }
        let report = try pool.check()
        if let first = report.problems.first {
            throw .corruptPool(path: name, reason: "its copy fails the check: \(first)" + (report.problems.count > 1 ? " (and \(report.problems.count - 1) more)" : ""))
        }
        return dropped
    }

    /// Removes `POOL.audit/` and the files in it (a backup's own log, when it was opened).
    static func removeAuditDirectory(of pool: String) {
        let dir = AuditLog.directory(ofPool: pool)
        guard let d = opendir(dir) else { return }
        while let entry = readdir(d) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { unlink(dir + "/" + name) }
        }
        closedir(d)
        rmdir(dir)
    }

    static func rename(_ temporary: String, to destination: String) throws(PMLLError) {
        guard Glibc.rename(temporary, destination) == 0 else {
            throw SystemCall.fileError(Errno(rawValue: errno), path: destination, operation: "rename into")
        }
        syncDirectory(of: destination)
    }

    /// Renames `temporary` over `target` while holding the target's INIT byte (openers wait,
    /// then find the new file) and its SESSION byte exclusively (nobody has it open).
    static func replace(_ target: String, with temporary: String) throws(PMLLError) -> Bool {
        let fd = open(target, O_RDWR | O_CLOEXEC)
        if fd < 0 {
            guard errno == ENOENT else { throw SystemCall.fileError(Errno(rawValue: errno), path: target, operation: "open") }
            try rename(temporary, to: target)
            return false
        }
        defer { close(fd) }   // drops both byte locks, after the rename
        _ = try SystemCall.retrying("fcntl(F_OFD_SETLKW)") { pmll_ofd_lock(fd, PMLL_LOCKBYTE_INIT, PMLL_RANGE_EXCLUSIVE, 1) }
        let alone = pmll_ofd_lock(fd, PMLL_LOCKBYTE_SESSION, PMLL_RANGE_EXCLUSIVE, 0)
        if alone == -EAGAIN { throw .poolInUse(path: target) }
        try SystemCall.check("fcntl(F_OFD_SETLK)", alone)
        try rename(temporary, to: target)
        return true
    }

    static func syncDirectory(of path: String) {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 {
            _ = fsync(fd)
            close(fd)
        }
    }
}
