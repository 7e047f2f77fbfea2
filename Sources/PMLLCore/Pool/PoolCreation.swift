package import CPMLL
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Creating a pool without a window in which another process can see it half-built:
/// the file is built and made durable under a private temporary name, then moved into
/// place with renameat2(RENAME_NOREPLACE). Of many concurrent creators exactly one
/// rename succeeds; the others discard their copy and open the winner's.
package enum PoolCreation {
    /// Returns true if this call created the pool, false if another process got there first.
    package static func createIfAbsent(path: String, options: PoolOptions) throws(PMLLError) -> Bool {
        try options.validate()
        let layout = options.layout(size: options.size)
        let (directory, base) = split(path)
        try FormerPoolFile.refuseIfStillMapped(path: path)
        let temporary = "\(directory)/.\(base).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).creating"
        let mode: UInt32 = options.groupShared ? 0o660 : 0o600

        var length: UInt64 = 0, isPmem: Int32 = 0, err: Int32 = 0
        guard let address = pmll_pmem_create(temporary, UInt64(options.size), mode, &length, &isPmem, &err) else {
            if err == ENOENT { throw .invalidPoolPath(path: path, reason: "directory '\(directory)' does not exist") }
            if err == ENOSPC { throw .invalidPoolPath(path: path, reason: "no space left for a \(options.size)-byte pool") }
            throw SystemCall.fileError(Errno(rawValue: err), path: path, operation: "create pool in directory of")
        }
        var renamed = false
        defer {
            _ = pmll_pmem_unmap(address, length)
            if !renamed { unlink(temporary) }
        }
        // Allocate every block now: a write through the mapping into a hole of a file system
        // that has filled up meanwhile would be SIGBUS, not an error.
        let fd = open(temporary, O_RDWR | O_CLOEXEC)
        let filled = fd >= 0 ? PoolFileBlocks.fillHoles(FileDescriptor(rawValue: fd), fileSize: options.size, heapStart: layout.heap.lowerBound) : -errno
        if fd >= 0 { close(fd) }
        if filled == -ENOSPC { throw .noSpace(path: path, reason: "the file system has no room for a \(options.size)-byte pool") }
        // The umask must not decide who may share the pool.
        guard chmod(temporary, mode_t(mode)) == 0 else {
            throw SystemCall.fileError(.current, path: temporary, operation: "chmod")
        }
        let header = address.assumingMemoryBound(to: pmll_header_t.self)
        PoolHeader.initialize(header, layout: layout, size: options.size, flags: options.groupShared ? PMLL_POOL_FLAG_GROUP_SHARED : 0,
                              storeVersion: options.storeVersion)
        VolatileState.stampBoot(header, reason: PMLL_RESET_CREATED)
        if !layout.auditRing.isEmpty { AuditRing.format(address + layout.auditRing.lowerBound, slots: options.auditRingSlots) }
        StoreLayout(heap: layout.heap, keyCapacity: options.keyCapacity, logSlots: options.logSlots, version: options.storeVersion)
            .format(address, heapStart: layout.heap.lowerBound)
        let persistence = Persistence(isPmem: isPmem != 0)
        try persistence.persist(address, Int(PMLL_HEADER_SIZE), site: "pool.create")
        try persistence.persist(address + layout.heap.lowerBound, StoreLayout.superSize, site: "pool.create")
        if !layout.auditRing.isEmpty { try persistence.persist(address + layout.auditRing.lowerBound, MemoryLayout<pmll_audit_ring_t>.size, site: "pool.create") }
        try syncFile(temporary)
        CrashPoint.hit("pool.created")

        let rc = pmll_rename_noreplace(temporary, path)
        if rc == -EEXIST { return false }
        guard rc == 0 else { throw SystemCall.fileError(Errno(rawValue: -rc), path: path, operation: "create pool") }
        renamed = true
        try syncFile(directory)
        return true
    }

    /// The pool's directory ("/" for a file at the root, "." for a bare name) and file name.
    static func split(_ path: String) -> (directory: String, base: String) {
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        return (directory.isEmpty ? "/" : directory, path.split(separator: "/").last.map(String.init) ?? path)
    }

    /// Removes what creators killed before their rename left behind: `.NAME.PID.RAND.creating`
    /// files next to the pool whose creator process is gone and that are older than a minute (a
    /// live creator is done within milliseconds; the age also covers a creator in another PID
    /// namespace, whose PID we cannot see). Best effort: runs when this process created the
    /// pool or reset its volatile state, and returns how many it removed.
    ///
    /// `quietMemo` (the pool header's word): the listing is skipped while the directory's
    /// mtime is the one recorded by a listing that found no temporary at all (one too young,
    /// or with a live creator, must be looked at again). A new temporary changes the mtime. A
    /// lone process resets the volatile state at every open, and listing a busy /tmp was a
    /// visible part of a `pmll lock` (Docs/Benchmarks.md). Only a mtime two seconds old is kept, since
    /// file systems stamp times at a coarse clock tick: an entry made in the tick of our stat
    /// could carry the same time.
    @discardableResult
    package static func removeAbandonedTemporaries(of path: String, quietMemo: UnsafeMutablePointer<UInt64>? = nil, now: time_t = time(nil)) -> Int {
        let (directory, base) = split(path)
        var dirStat = stat()
        guard stat(directory, &dirStat) == 0 else { return 0 }
        let mtime = UInt64(max(0, dirStat.st_mtim.tv_sec)) &* 1_000_000_000 &+ UInt64(max(0, dirStat.st_mtim.tv_nsec))
        if let quietMemo, mtime != 0, pmll_load64(quietMemo) == mtime { return 0 }
        guard let dir = opendir(directory) else { return 0 }
        defer { closedir(dir) }
        let prefix = "." + base + ".", suffix = ".creating"
        var removed = 0, seen = 0
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.hasPrefix(prefix), name.hasSuffix(suffix), name.count > prefix.count + suffix.count else { continue }
            let middle = name.dropFirst(prefix.count).dropLast(suffix.count).split(separator: ".")
            guard middle.count == 2, let pid = pid_t(middle[0]), UInt32(middle[1]) != nil else { continue }
            seen += 1
            if pid == getpid() || kill(pid, 0) == 0 || errno != ESRCH { continue }
            var st = stat()
            guard fstatat(dirfd(dir), name, &st, AT_SYMLINK_NOFOLLOW) == 0, st.st_mode & S_IFMT == S_IFREG,
                  now - st.st_mtim.tv_sec > 60 else { continue }
            if unlinkat(dirfd(dir), name, 0) == 0 { removed += 1 }
        }
        if let quietMemo {
            // Any temporary seen is looked at again (or, removed, moved the mtime anyway).
            pmll_store64(quietMemo, seen == 0 && now - dirStat.st_mtim.tv_sec >= 2 ? mtime : 0)
        }
        return removed
    }

    /// fsync by path: makes the file's size and the directory entry durable, which msync does not.
    package static func syncFile(_ path: String) throws(PMLLError) {
        let fd = try SystemCall.libc("open") { open(path, O_RDONLY | O_CLOEXEC) }
        defer { close(fd) }
        _ = try SystemCall.libc("fsync") { fsync(fd) }
    }
}
