package import CPMLL
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
    /// is nothing to look for. Otherwise it reads the maps of every process (about 5 µs each).
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

    /// ``refuseIfStillMapped(path:)`` for an attach to an existing pool, skipped while the pool's
    /// directory is unchanged since a look found nothing: a file moved to the path, or a path
    /// freed by deleting, changes the directory's mtime. `memo` (the pool header's word) holds
    /// the directory's fingerprint after such a look, stored only once its mtime has settled
    /// (file systems stamp times at a coarse clock tick, so a rename in the tick that set the
    /// mtime we saw could leave it unchanged: 50 ms on local file systems, 2 s elsewhere).
    /// Costs a `stat` when nothing changed, and a read of /proc/locks when the directory changed
    /// but no other pool is open. `now`: CLOCK_REALTIME ns.
    package static func refuseIfReplaced(path: String, inode: UInt64, memo: UnsafeMutablePointer<UInt64>,
                                         now: Int64 = Clock.realtimeNanoseconds) throws(PMLLError) {
        let directory = PoolCreation.split(path).directory
        var st = stat()
        guard stat(directory, &st) == 0 else { return }
        let print = fingerprint(st)
        if pmll_load64(memo) == print { return }
        try refuseIfStillMapped(path: path, ownInode: inode)
        let mtime = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
        pmll_store64(memo, now - mtime >= pmll_fs_timestamp_settle_ns(directory) ? print : 0)
    }

    /// The directory's device, inode and mtime in one nonzero word (FNV-1a).
    static func fingerprint(_ st: stat) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for value in [UInt64(st.st_dev), UInt64(st.st_ino), UInt64(bitPattern: Int64(st.st_mtim.tv_sec)), UInt64(bitPattern: Int64(st.st_mtim.tv_nsec))] {
            for i in 0..<8 {
                h ^= (value >> (8 * UInt64(i))) & 0xff
                h = h &* 0x100_0000_01b3
            }
        }
        return h == 0 ? 1 : h
    }
}
