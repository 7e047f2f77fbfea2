import CPMLL
import Dispatch
import Logging
import Synchronization
package import SystemPackage
#if canImport(Glibc)
import Glibc
#endif
import PMLLCore
import PMLLLocks
import PMLLStore

/// Which backend ran a batch's file I/O.
public enum IOBackendKind: String, Sendable, Codable {
    case uring
    case syscalls
}

/// How a batch creates new files: by name (`O_CREAT|O_EXCL`), or unnamed (`O_TMPFILE`) and
/// linked at their name once written (`IOBackend.creation(forDirectory:)`).
public enum FileCreation: String, Sendable, Codable {
    case named
    case unnamed
}

/// Batched file writes, fsyncs and removals: io_uring (linked fsync/close chains for staged
/// files, open/write/fsync/close chains on fixed slots for files created by name, parallel
/// unlinks and fsyncs; io-wq raised to 16 workers) or plain syscalls on 16 threads. Probed once per process;
/// `PMLL_IO_BACKEND=uring|syscalls` forces one. A submit that fails with EPERM, ENOSYS,
/// EINVAL, ENOMEM or EOPNOTSUPP switches the process to syscalls for good.
package final class IOBackend: @unchecked Sendable {
    package static let shared = IOBackend()
    private static let logger = LibraryLogging.logger(label: "pmll.io")
    private let ring = Mutex<RingHandle>(RingHandle())   // the ring is used by one batch at a time

    /// liburing's ring is not thread-safe; the mutex serialises its use.
    package struct RingHandle: @unchecked Sendable {
        package var pointer: OpaquePointer?
    }
    private let current: Atomic<Int>

    package struct WriteItem {
        /// The directory the file goes in (its name is relative to it).
        package let directory: FileDescriptor
        package var name: String
        package let data: [UInt8]
        package let mode: UInt32
        /// Once the file is staged, rename it to `final` (same directory): a new file the batch
        /// can place while staging, because no other step touches its path.
        package var final: String? = nil
        /// Or exchange it with the existing `target` (`name` is then the backup name, where
        /// the exchange leaves the old file); `temp` serves a filesystem that cannot exchange.
        package var exchange: (target: String, temp: String)? = nil
        /// Set `mode` exactly (`O_CREAT` masks it with the umask), before the file gets a name.
        package var exactMode = false
        /// Keep an `O_PATH` descriptor of the old file (the `exchange` target): removing its
        /// last name then frees nothing, and closing the descriptor later frees the inode (see
        /// `InodeRelease`).
        package var hold = false
        /// Told when the item's old file is at the backup name and when the new one is in
        /// place: the batch protocol's crash points (the backend knows none).
        package var milestone: (@Sendable (StagingMilestone) -> Void)? = nil
    }

    /// Points of placing a staged item that the batch protocol cares about.
    package enum StagingMilestone: Sendable {
        /// The backup name holds a file (the new one before an exchange, the old one after a
        /// backup link).
        case linked
        /// The target has its new file.
        case renamed
    }

    /// The creation for new files in `dirfd`'s filesystem. By name, except on ext4 without a
    /// journal: there an inode allocation passes over every inode freed in the last minutes, and
    /// a create by name does it under the directory's lock, so the creates of a directory run
    /// one at a time; an unnamed file is allocated outside that lock, so the allocations spread
    /// over the cores (Docs/FileBatches.md, *Named or unnamed files*). Elsewhere creates by name
    /// were as fast or faster (XFS handles unnamed files through its unlinked list) and use
    /// less CPU. `PMLL_STAGING=named|unnamed` forces one. Decided once per device number (a
    /// device number reused by another mount later costs speed, never correctness).
    package static func creation(forDirectory directory: FileDescriptor) -> FileCreation {
        let dirfd = directory.rawValue
        if stagingOptions.contains("named") || !canLinkUnnamedFiles { return .named }
        if stagingOptions.contains("unnamed") { return .unnamed }
        var st = stat()
        guard fstat(dirfd, &st) == 0 else { return .named }
        return creationByDevice.withLock { known in
            if let creation = known[UInt64(st.st_dev)] { return creation }
            let creation: FileCreation = pmll_ext4_without_journal(dirfd) == 1 ? .unnamed : .named
            known[UInt64(st.st_dev)] = creation
            logger.debug("new files on this filesystem are created \(creation == .named ? "by name" : "unnamed, then linked")",
                         metadata: ["device": "\(st.st_dev)"])
            return creation
        }
    }
    private static let creationByDevice = Mutex<[UInt64: FileCreation]>([:])

    /// What staging did to each item.
    package struct Staged {
        /// 0 or -errno per item.
        package var results: [Int32]
        /// Per item, the `O_PATH` descriptor of the old file (`hold`), or -1.
        package var held: [Int32]
    }

    private init() {
        let forced = Knob.ioBackend.value
        var pointer: OpaquePointer?
        var kind = IOBackendKind.syscalls
        if forced != "syscalls" {
            var r: OpaquePointer?
            let rc = pmll_uring_create(4096, 1024, &r)
            if rc == 0, let r, pmll_uring_probe_ops(r) == 0 {
                pointer = r
                kind = .uring
            } else {
                if let r { pmll_uring_destroy(r) }
                Self.logger.info("io_uring unavailable, using syscalls", metadata: ["errno": "\(-rc)"])
            }
        }
        current = Atomic(kind == .uring ? 1 : 0)
        ring.withLock { $0.pointer = pointer }
    }

    package var kind: IOBackendKind { current.load(ordering: .relaxed) == 1 ? .uring : .syscalls }

    package static func fallsBack(_ rc: Int32) -> Bool {
        [EPERM, ENOSYS, EINVAL, ENOMEM, EOPNOTSUPP].contains(-rc)
    }

    /// A name in a directory.
    package struct Entry {
        package let directory: FileDescriptor
        package let name: String

        package init(directory: FileDescriptor, name: String) {
            self.directory = directory
            self.name = name
        }
    }

    /// Creates each file (O_EXCL, or unnamed and linked: `creation`) with its data, optionally
    /// fsynced. Returns 0 or -errno per item.
    ///
    /// Unsynced creates go to the thread pool on both backends. io_uring punts every
    /// `O_CREAT` open (and buffered tmpfs writes) to io-wq workers, which measured slower than
    /// both inline calls and the threads (figures in Docs/FileBatches.md). Fsynced creates on
    /// io_uring are chains on the ring, always by name, where parallel fsyncs share journal
    /// commits.
    package func writeFiles(_ items: [WriteItem], fsync: Bool, creation: FileCreation) -> [Int32] {
        if kind == .uring && fsync, let results = viaRing({ r in
            var results = [Int32](repeating: 0, count: items.count)
            let rc = Self.withCStrings(items.map(\.name)) { names in
                withExtendedLifetime(items) { () -> Int32 in
                    let datas = items.map { item in item.data.withUnsafeBytes { UnsafeRawPointer($0.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!) } }
                    let dirfds = items.map(\.dirfd), lengths = items.map { $0.data.count }, modes = items.map(\.mode)
                    return pmll_uring_write_files(r, Int32(items.count), dirfds, names, datas, lengths, modes, &results)
                }
            }
            return (rc, results)
        }) {
            return zip(items, results).map { item, rc in
                rc == 0 && item.exactMode && fchmodat(item.dirfd, item.name, mode_t(item.mode), 0) != 0 ? -errno : rc
            }
        }
        var results = [Int32](repeating: 0, count: items.count)
        results.withUnsafeMutableBufferPointer { out in
            let out = SendableBuffer(out)
            Self.parallel(items.count) { i in
                out[i] = creation == .unnamed ? Self.stageOne(items[i], fsync: fsync).0 : Self.create(items[i], fsync: fsync)
            }
        }
        return results
    }

    /// Stages new contents: each file is created (`creation`) and written, at its first name,
    /// then (as the item asks) exchanged with its target or renamed into place; with `fsync`,
    /// each file is fsynced too. Returns 0 or -errno per item, and the held old files.
    ///
    /// Files created by name go through `writeFiles` (on io_uring with fsync: one linked chain
    /// per file on a fixed slot), then are exchanged or renamed in order. Unnamed files are
    /// placed by threads on both backends, because placing one is CPU work in the kernel,
    /// which io-wq ran slower than threads (it opens one at a time; Docs/FileBatches.md); on
    /// io_uring the fsyncs, the only waits, go to the ring as each file is placed. A
    /// filesystem without `O_TMPFILE` gets creates by name.
    package func stageFiles(_ items: [WriteItem], fsync: Bool, creation: FileCreation) -> Staged {
        var staged = Staged(results: [Int32](repeating: 0, count: items.count), held: [Int32](repeating: -1, count: items.count))
        guard creation == .unnamed else {
            staged.results = Self.finishNamed(items, writeFiles(items, fsync: fsync, creation: .named), held: &staged.held)
            return staged
        }
        if kind == .syscalls || !fsync {
            staged.results.withUnsafeMutableBufferPointer { out in
                staged.held.withUnsafeMutableBufferPointer { held in
                    let out = SendableBuffer(out), held = SendableBuffer(held)
                    Self.parallel(items.count) { i in (out[i], held[i]) = Self.stageOne(items[i], fsync: fsync) }
                }
            }
            return staged
        }
        // Groups bound the descriptors open at once (RLIMIT_NOFILE is often 1024).
        for start in stride(from: 0, to: items.count, by: 256) {
            let group = Array(items[start..<min(start + 256, items.count)])
            var placed = [Int32](repeating: 0, count: group.count), held = [Int32](repeating: -1, count: group.count)
            var ran = false
            let synced = viaRing(fatal: true) { r in
                ran = true
                var out = [Int32](repeating: 0, count: group.count)
                let rc = Self.syncOnRing(r, group, placed: &placed, held: &held, results: &out)
                return (rc, out)
            }
            // Another batch of this process gave the ring up in the meantime: nothing was placed.
            if !ran {
                for k in group.indices { (staged.results[start + k], staged.held[start + k]) = Self.stageOne(group[k], fsync: fsync) }
                continue
            }
            for k in group.indices {
                staged.held[start + k] = held[k]
                staged.results[start + k] = placed[k] != 0 ? placed[k] : synced?[k] ?? Self.fsyncPlaced(group[k])
            }
        }
        return staged
    }

    /// The io_uring half of `stageFiles` for one group: threads place each file (open
    /// unnamed, write, link, exchange or rename: CPU work in the kernel) and hand its descriptor
    /// over; this thread queues its fsync and close on the ring at once, so the fsyncs wait in
    /// io-wq while the threads go on. `placed` gets each file's placing result, `results` the
    /// fsyncs'.
    private static func syncOnRing(_ r: OpaquePointer, _ group: [WriteItem], placed: inout [Int32], held: inout [Int32], results: inout [Int32]) -> Int32 {
        guard let stage = pmll_uring_stage_begin(r, Int32(group.count)) else { return -ENOMEM }
        let done = Mutex<[(Int, Int32, Int32, Int32)]>([])
        let ready = DispatchSemaphore(value: 0)
        let join = spawn(group.count) { k in
            let (rc, fd, old) = place(group[k], fsync: true)
            done.withLock { $0.append((k, rc, fd, old)) }
            ready.signal()
        }
        var handled = 0, failed: Int32 = 0
        while handled < group.count {
            ready.wait()
            let batch = done.withLock { list in defer { list.removeAll() }; return list }
            for _ in 1..<max(batch.count, 1) { ready.wait() }
            for (k, rc, fd, old) in batch {
                (placed[k], held[k]) = (rc, old)
                guard fd >= 0 else { continue }
                let added = pmll_uring_stage_add(stage, Int32(k), fd)
                if added != 0 && failed == 0 { failed = added }
            }
            handled += batch.count
            if failed == 0 { failed = pmll_uring_stage_submit(stage) }
        }
        join()
        let rc = pmll_uring_stage_finish(stage, &results)
        return failed != 0 ? failed : rc
    }

    /// fsync of a file placed before the ring failed (its descriptor is closed): 0 or -errno.
    private static func fsyncPlaced(_ item: WriteItem) -> Int32 {
        let fd = openat(item.dirfd, item.exchange?.target ?? item.final ?? item.name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return -errno }
        defer { close(fd) }
        return Glibc.fsync(fd) == 0 ? 0 : -errno
    }

    /// `O_TMPFILE` files are named through `/proc/self/fd` (linkat with `AT_EMPTY_PATH`
    /// needs CAP_DAC_READ_SEARCH): without `/proc`, files are created by name.
    private static let canLinkUnnamedFiles = access("/proc/self/fd", X_OK) == 0

    /// `PMLL_STAGING`, a comma-separated list: `named` or `unnamed` (`creation(forDirectory:)`;
    /// the tests force each), `no-exchange` (staging applies replaces as a filesystem without
    /// `RENAME_EXCHANGE` gets them: backup link, then rename).
    private static let stagingOptions = Set((Knob.staging.value ?? "").split(separator: ",").map(String.init))
    private static let canExchange = !stagingOptions.contains("no-exchange")

    /// Opens `item`'s unnamed file with its exact mode, and the old file if it is to be held:
    /// (fd or -errno, held descriptor or -1).
    private static func open(_ item: WriteItem) -> (Int32, Int32) {
        let fd = pmll_open_unnamed(item.dirfd, item.mode)
        if fd >= 0 && item.exactMode && fchmod(fd, mode_t(item.mode)) != 0 {
            let e = -errno
            close(fd)
            return (e, -1)
        }
        return (fd, fd >= 0 ? hold(item) : -1)
    }

    private static func hold(_ item: WriteItem) -> Int32 {
        guard item.hold, let target = item.exchange?.target else { return -1 }
        return max(pmll_open_path(item.dirfd, target), -1)
    }

    /// One staged file with plain syscalls, fsynced inline: (0 or -errno, held descriptor or -1).
    private static func stageOne(_ item: WriteItem, fsync: Bool) -> (Int32, Int32) {
        let (rc, fd, old) = place(item, fsync: fsync)
        guard fd >= 0 else { return (rc, old) }
        defer { close(fd) }
        return (fsync && Glibc.fsync(fd) != 0 ? -errno : 0, old)
    }

    /// Puts one item in place: an unnamed file with its data, linked at its first name, then
    /// its exchange or rename. The data need not be durable before the rename: until
    /// the batch commits, undo puts the backup back. (0, open descriptor for the fsync, held)
    /// or (-errno, -1, held). A filesystem without `O_TMPFILE` gets a named create (already
    /// fsynced and closed: descriptor -1).
    private static func place(_ item: WriteItem, fsync: Bool) -> (Int32, Int32, Int32) {
        let (fd, old) = open(item)
        guard fd >= 0 else {
            guard pmll_unnamed_unsupported(-fd) != 0 else { return (fd, -1, -1) }
            var held: [Int32] = [-1]
            return (finishNamed([item], [create(item, fsync: fsync)], held: &held)[0], -1, held[0])
        }
        var rc = writeAll(fd, item.data) ?? pmll_link_unnamed(fd, item.dirfd, item.name)
        if rc == 0 { rc = finishLinked(item) }
        if rc != 0 { close(fd); return (rc, -1, old) }
        return (0, fd, old)
    }

    /// The exchange (or, where the filesystem cannot exchange, the backup link and the
    /// rename), or the rename, of a staged item: 0 or -errno.
    private static func finishLinked(_ item: WriteItem) -> Int32 {
        if let exchange = item.exchange {
            if canExchange {
                item.milestone?(.linked)   // the new file is at the backup name
                let rc = pmll_rename_exchange(item.dirfd, item.name, exchange.target)
                if rc == 0 {
                    item.milestone?(.renamed)
                    return 0
                }
                guard pmll_exchange_unsupported(-rc) != 0 else { return rc }
            }
            // No exchange here: the new file moves to the temporary name, the old one gets the
            // backup link, and the rename follows, as for a step applied in order.
            guard renameat(item.dirfd, item.name, item.dirfd, exchange.temp) == 0,
                  linkat(item.dirfd, exchange.target, item.dirfd, item.name, 0) == 0 else { return -errno }
            item.milestone?(.linked)
            guard renameat(item.dirfd, exchange.temp, item.dirfd, exchange.target) == 0 else { return -errno }
            item.milestone?(.renamed)
            return 0
        }
        if let final = item.final {
            guard renameat(item.dirfd, item.name, item.dirfd, final) == 0 else { return -errno }
            item.milestone?(.renamed)
        }
        return 0
    }

    /// Finishes items created by name (results of `writeFiles`, which set exact modes):
    /// held old file, exchange or rename. The new results.
    private static func finishNamed(_ items: [WriteItem], _ results: [Int32], held: inout [Int32]) -> [Int32] {
        zip(items, results).enumerated().map { k, pair in
            let (item, rc) = pair
            guard rc == 0 else { return rc }
            held[k] = hold(item)
            return finishLinked(item)
        }
    }

    /// One new file with plain syscalls: 0 or -errno.
    private static func create(_ item: WriteItem, fsync: Bool) -> Int32 {
        let fd = openat(item.dirfd, item.name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, mode_t(item.mode))
        guard fd >= 0 else { return -errno }
        defer { close(fd) }
        if item.exactMode && fchmod(fd, mode_t(item.mode)) != 0 { return -errno }
        if let failed = writeAll(fd, item.data) { return failed }
        return fsync && Glibc.fsync(fd) != 0 ? -errno : 0
    }

    /// nil, or -errno (-ENOSPC for a write that makes no progress).
    private static func writeAll(_ fd: Int32, _ data: [UInt8]) -> Int32? {
        var done = 0
        while done < data.count {
            let n = data.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 { if errno == EINTR { continue }; return -errno }
            if n == 0 { return -ENOSPC }
            done += n
        }
        return nil
    }

    /// Removes each name (not directories), in parallel: on a journaling filesystem freeing
    /// the inode is the slow part, and it runs outside the directory lock, so the evictions
    /// overlap (about 3x faster for 200 small files on ext4; Docs/FileBatches.md).
    /// Returns 0 or -errno per entry.
    package func unlink(_ entries: [Entry]) -> [Int32] {
        if kind == .uring, let results = viaRing({ r in
            var results = [Int32](repeating: 0, count: entries.count)
            let rc = Self.withCStrings(entries.map(\.name)) { names in
                pmll_uring_unlink(r, Int32(entries.count), entries.map(\.dirfd), names, &results)
            }
            return (rc, results)
        }) { return results }
        var results = [Int32](repeating: 0, count: entries.count)
        results.withUnsafeMutableBufferPointer { out in
            let out = SendableBuffer(out)
            Self.parallel(entries.count) { i in out[i] = unlinkat(entries[i].dirfd, entries[i].name, 0) == 0 ? 0 : -errno }
        }
        return results
    }

    private static func withCStrings<R>(_ strings: [String], _ body: ([UnsafePointer<CChar>]) -> R) -> R {
        let copies = strings.map { strdup($0)! }
        defer { copies.forEach { free($0) } }
        return body(copies.map { UnsafePointer($0) })
    }

    /// fsyncs every descriptor. Returns 0 or -errno per descriptor.
    package func fsync(_ descriptors: [FileDescriptor]) -> [Int32] {
        let fds = descriptors.map(\.rawValue)
        if kind == .uring, let results = viaRing({ r in
            var results = [Int32](repeating: 0, count: fds.count)
            let rc = pmll_uring_fsync_fds(r, Int32(fds.count), fds, &results)
            return (rc, results)
        }) { return results }
        var results = [Int32](repeating: 0, count: fds.count)
        results.withUnsafeMutableBufferPointer { out in
            let out = SendableBuffer(out)
            Self.parallel(fds.count) { i in out[i] = Glibc.fsync(fds[i]) == 0 ? 0 : -errno }
        }
        return results
    }

    /// Runs `body` on the ring; nil (and syscalls from now on) if the ring fails in a way
    /// that means io_uring is not usable here.
    /// `fatal`: any failure gives the ring up (the operation may have left submissions behind).
    private func viaRing(fatal: Bool = false, _ body: (OpaquePointer) -> (Int32, [Int32])) -> [Int32]? {
        ring.withLock { handle -> [Int32]? in
            guard let ring = handle.pointer else { return nil }
            let (rc, results) = body(ring)
            if rc == 0 { return results }
            if fatal || Self.fallsBack(rc) {
                Self.logger.warning("io_uring submit failed, switching to syscalls", metadata: ["errno": "\(-rc)"])
                current.store(0, ordering: .relaxed)
                pmll_uring_destroy(ring)
                handle.pointer = nil
                return nil
            }
            return results.map { $0 == 0 ? rc : $0 }
        }
    }

    /// `body(0..<count)` on the library's I/O threads and the caller (``IOThreadPool``); one
    /// task (a directory fsync, most often) runs inline.
    package static func parallel(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
        IOThreadPool.shared.run(count, body)
    }

    /// Starts `body(0..<count)` on the I/O threads and returns at once; call the result to wait.
    package static func spawn(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) -> () -> Void {
        IOThreadPool.shared.start(count, body)
    }

}

/// A buffer written by disjoint indexes from several threads.
package struct SendableBuffer: @unchecked Sendable {
    package let buffer: UnsafeMutableBufferPointer<Int32>
    package init(_ buffer: UnsafeMutableBufferPointer<Int32>) { self.buffer = buffer }
    package subscript(i: Int) -> Int32 {
        get { buffer[i] }
        nonmutating set { buffer[i] = newValue }
    }
}

// The *at(2) calls swift-system does not wrap take raw descriptors: the backend's C-facing
// code reads them here, and only here.
extension IOBackend.WriteItem {
    var dirfd: Int32 { directory.rawValue }
}

extension IOBackend.Entry {
    var dirfd: Int32 { directory.rawValue }
}
