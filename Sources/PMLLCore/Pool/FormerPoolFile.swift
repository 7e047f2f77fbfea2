import CPMLL
#if canImport(Glibc)
import Glibc
#endif

/// Processes attached to a pool keep its file mapped after the path stops naming it: deleted
/// (`rm`), or replaced by another file renamed over it (`mv`, a restore by hand). They keep
/// excluding each other on that file; a pool at the path now, created or moved in, would be a
/// second set of locks that does not exclude them. Such a process's maps list the former file
/// as "PATH (deleted)", so creating or attaching looks for one and refuses while there is one.
/// Nobody can open a file that no path names any more, so the set of such processes can only
/// shrink: a look that finds none stays true. Processes of other users are invisible without
/// privilege (their maps are not readable): see Docs/Reliability.md.
package enum FormerPoolFile {
    /// Throws ``PMLLError/poolDeletedWhileOpen(path:pid:command:)`` if a process maps a former
    /// file of `path`. A former file in use is a pool some process is attached to, so it holds
    /// an OFD lock on the pool's SESSION (or, attaching, INIT) byte: when /proc/locks shows no
    /// such lock on a file other than `ownInode` (the file now at the path; 0 for none), there
    /// is nothing to look for. Otherwise it reads the maps of every process (about 20 µs each here).
    package static func refuseIfStillMapped(path: String, ownInode: UInt64 = 0) throws(PMLLError) {
        if pmll_other_pool_open(ownInode) == 0 { return }
        let (directory, base) = PoolCreation.split(path)
        guard let real = realpath(directory, nil) else { return }   // opening or creating will name the problem
        let canonical = String(cString: real)
        free(real)
        let absolute = canonical == "/" ? "/" + base : canonical + "/" + base
        var command = [CChar](repeating: 0, count: 64)
        let pid = pmll_find_deleted_mapping(absolute, &command, command.count)
        guard pid != 0 else { return }
        throw .poolDeletedWhileOpen(path: path, pid: pid, command: String(decoding: command.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    /// ``refuseIfStillMapped(path:)`` for an attach to an existing pool (`file`: its `fstat`),
    /// skipped when a look since found nothing and either of two facts since holds, each kept
    /// as a fingerprint in the pool header's volatile part:
    /// - `directoryMemo`: the directory is unchanged (device, inode, mtime): moving a file to
    ///   the path, or freeing the path by deleting, changes the directory's mtime;
    /// - `fileMemo`: the pool file is the one that was at the path then, not moved since
    ///   (device, inode, ctime): renaming or linking a file changes its ctime, so a file whose
    ///   ctime did not move stayed at the path, and no other file can have been there since.
    ///   (Writes through a shared mapping move the ctime on most disk file systems, where the
    ///   directory's memo is then the one that holds; on tmpfs they do not.)
    /// A fingerprint is stored only once its time has settled: file systems stamp times from a
    /// coarse clock, so a change in the same tick as the one we saw could leave the time as it
    /// was (50 ms on local file systems, 2 s elsewhere). Costs a `stat` when nothing changed, and
    /// a read of /proc/locks when something did but no other pool is open. `now`: CLOCK_REALTIME ns.
    static func refuseIfReplaced(path: String, file: stat, directoryMemo: UnsafeMutablePointer<UInt64>,
                                 fileMemo: UnsafeMutablePointer<UInt64>, now: Int64 = Clock.realtimeNanoseconds) throws(PMLLError) {
        let filePrint = fingerprint(file.st_dev, file.st_ino, file.st_ctim)
        if pmll_load64(fileMemo) == filePrint { return }
        let directory = PoolCreation.split(path).directory
        var st = stat()
        guard stat(directory, &st) == 0 else { return }
        let directoryPrint = fingerprint(st.st_dev, st.st_ino, st.st_mtim)
        if pmll_load64(directoryMemo) == directoryPrint { return }
        try refuseIfStillMapped(path: path, ownInode: UInt64(file.st_ino))
        let settle = pmll_fs_timestamp_settle_ns(directory)
        pmll_store64(directoryMemo, now - nanoseconds(st.st_mtim) >= settle ? directoryPrint : 0)
        // Only where renames are known to move the ctime (the file systems with a short settling
        // time): FAT, for one, keeps no change time.
        let knownFileSystem = settle < 1_000_000_000
        pmll_store64(fileMemo, knownFileSystem && now - nanoseconds(file.st_ctim) >= settle ? filePrint : 0)
    }

    static func nanoseconds(_ t: timespec) -> Int64 { Int64(t.tv_sec) * 1_000_000_000 + Int64(t.tv_nsec) }

    /// A device, an inode and a time in one nonzero word (FNV-1a).
    static func fingerprint(_ device: dev_t, _ inode: ino_t, _ time: timespec) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for value in [UInt64(device), UInt64(inode), UInt64(bitPattern: Int64(time.tv_sec)), UInt64(bitPattern: Int64(time.tv_nsec))] {
            for i in 0..<8 {
                h ^= (value >> (8 * UInt64(i))) & 0xff
                h = h &* 0x100_0000_01b3
            }
        }
        return h == 0 ? 1 : h
    }
}
