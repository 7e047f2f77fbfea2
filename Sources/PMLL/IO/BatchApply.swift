import CPMLL
import Foundation
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// What applying a batch did.
public struct BatchReport: Sendable, Codable, Equatable {
    public let backend: IOBackendKind
    public let atomic: Bool
    /// "ok", or the error of that entry (non-atomic mode reports each; atomic mode fails whole).
    public let results: [String]
    public let nanoseconds: Int64
}

extension Pool {
    static let batchPrefix = "pmll:batch/"

    /// Applies `batch` below `root`. Atomic: after success every operation is durable; after
    /// a failure, or a crash followed by recovery (on open or `pmll recover`), the tree is
    /// exactly as before. Non-atomic: best effort, one result per entry. `durable: false`
    /// skips the fsyncs (for scratch trees; atomicity against process crashes remains).
    public func apply(_ batch: FileBatch, root: String, atomic: Bool = true, durable: Bool = true) throws(PMLLError) -> BatchReport {
        try batch.validate()
        let start = Clock.monotonicNanoseconds
        let rootFD = Glibc.open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard rootFD >= 0 else { throw SystemCall.fileError(.current, path: root, operation: "open batch root") }
        defer { close(rootFD) }
        // A dead process's half-applied batch on this tree is undone first. The caller holds
        // whatever serialises work on the tree (its lock, its queue turn), so nobody else is
        // changing it now.
        try recoverFileBatches(root: Self.absolute(root))
        let dirs = DirectoryCache(root: rootFD)
        defer { dirs.closeAll() }
        let backend = IOBackend.shared
        if !atomic {
            let results = applyBestEffort(batch, dirs: dirs, backend: backend, durable: durable)
            return BatchReport(backend: backend.kind, atomic: false, results: results, nanoseconds: Clock.monotonicNanoseconds - start)
        }
        let id = String(UInt64.random(in: 0...UInt64.max), radix: 36)
        var journal = BatchJournal(id: id, root: Self.absolute(root), owner: token, phase: .staging,
                                   steps: try plan(batch, dirs: dirs))
        try writeJournal(journal)
        do {
            let backedUp = try stage(batch, journal: journal, dirs: dirs, backend: backend, durable: durable)
            CrashPoint.hit("batch.staged")
            try applySteps(journal, backedUp: backedUp, dirs: dirs, backend: backend, durable: durable,
                           fsyncs: batch.operations.compactMap { if case .fsync(let p) = $0 { p } else { nil } })
        } catch {
            undo(journal, dirs: dirs)
            try? deleteJournal(id)
            throw error
        }
        journal.phase = .committed
        try writeJournal(journal)
        CrashPoint.hit("batch.committed")
        cleanUp(journal, dirs: dirs)
        try deleteJournal(id)
        return BatchReport(backend: backend.kind, atomic: true, results: batch.operations.map { _ in "ok" },
                           nanoseconds: Clock.monotonicNanoseconds - start)
    }

    // MARK: plan and journal

    /// Plans each step against the tree as the earlier steps of the batch will have left it,
    /// so that a step may use what an earlier one creates.
    private func plan(_ batch: FileBatch, dirs: DirectoryCache) throws(PMLLError) -> [BatchStep] {
        var steps: [BatchStep] = []
        var created = Set<String>(), removed = Set<String>()
        func exists(_ path: String) -> Bool { created.contains(path) || (!removed.contains(path) && dirs.exists(path)) }
        for (n, op) in batch.operations.enumerated() {
            var step = BatchStep(op: .fsync, path: op.paths[0], to: nil, existed: exists(op.paths[0]), toExisted: false, createdDirs: [])
            switch op {
            case .write(let path, _, _):
                step.op = .write
                created.insert(path); removed.remove(path)
            case .replace:
                step.op = .replace
                guard step.existed else { throw .invalidBatch(index: n, reason: "'\(step.path)' does not exist (replace needs an existing file)") }
            case .delete(let path):
                step.op = .delete
                guard step.existed else { throw .invalidBatch(index: n, reason: "'\(step.path)' does not exist") }
                removed.insert(path); created.remove(path)
            case .mkdir(let path, _):
                step.op = .mkdir
                var prefix = ""
                for component in path.split(separator: "/") {
                    prefix = prefix.isEmpty ? String(component) : prefix + "/" + component
                    if !exists(prefix) { step.createdDirs.append(prefix); created.insert(prefix) }
                }
            case .rename(let from, let to):
                step.op = .rename
                step.to = to
                step.toExisted = exists(to)
                guard step.existed else { throw .invalidBatch(index: n, reason: "'\(from)' does not exist") }
                removed.insert(from); created.remove(from)
                created.insert(to); removed.remove(to)
            case .fsync: break
            }
            steps.append(step)
        }
        return steps
    }

    private func writeJournal(_ journal: BatchJournal) throws(PMLLError) {
        let key = Self.batchPrefix + journal.id
        let bytes = journal.encoded()
        guard bytes.count <= Int(PMLL_VALUE_MAX) else {
            throw .invalidBatch(index: nil, reason: "too many entries for one atomic batch (journal of \(bytes.count) bytes; the limit is \(PMLL_VALUE_MAX))")
        }
        try internalTransaction { tx throws(PMLLError) in try tx.setInternal(key, bytes) }
    }

    private func deleteJournal(_ id: String) throws(PMLLError) {
        try internalTransaction { tx throws(PMLLError) in try tx.deleteInternal(Self.batchPrefix + id) }
    }

    // MARK: phases

    /// Creates the planned directories, then writes every new content into a temporary next
    /// to its target, fsynced, through the backend (io_uring chains or the thread pool).
    /// Where a step replaces a file that no earlier step touches, the backup link is made here
    /// too, in parallel with the other files' fsyncs rather than one by one in `applySteps`.
    /// Returns those steps.
    private func stage(_ batch: FileBatch, journal: BatchJournal, dirs: DirectoryCache, backend: IOBackend, durable: Bool) throws(PMLLError) -> Set<Int> {
        for (n, op) in batch.operations.enumerated() {
            guard case .mkdir(_, let mode) = op else { continue }
            for dir in journal.steps[n].createdDirs {
                let (parent, name) = PathGuard.split(dir)
                let fd = try dirs.directory(parent, index: n)
                if mkdirat(fd, name, mode_t(mode)) != 0 && errno != EEXIST { throw .batchFailed(index: n, path: dir, errno: .current) }
            }
        }
        var items: [IOBackend.WriteItem] = [], indexes: [Int] = []
        var touched = Set<String>(), backedUp = Set<Int>()
        for (n, op) in batch.operations.enumerated() {
            defer { touched.formUnion(op.paths + journal.steps[n].createdDirs) }
            switch op {
            case .write(let path, let data, let mode), .replace(let path, let data, let mode):
                var item = IOBackend.WriteItem(dirfd: try dirs.directory(PathGuard.split(path).parent, index: n), name: journal.temp(n), data: data, mode: mode)
                if journal.steps[n].existed && !touched.contains(path) {
                    item.backup = (PathGuard.split(path).name, journal.backup(n))
                    backedUp.insert(n)
                }
                items.append(item)
                indexes.append(n)
            default: continue
            }
        }
        let results = backend.stageFiles(items, fsync: durable)
        for (k, rc) in results.enumerated() where rc != 0 {
            throw .batchFailed(index: indexes[k], path: journal.steps[indexes[k]].path, errno: Errno(rawValue: -rc))
        }
        // O_CREAT's mode is masked by the umask: set the requested one where it was.
        for (k, item) in items.enumerated() where item.mode & Self.umaskBits != 0 && fchmodat(item.dirfd, item.name, mode_t(item.mode), 0) != 0 {
            throw .batchFailed(index: indexes[k], path: journal.steps[indexes[k]].path, errno: .current)
        }
        return backedUp
    }

    /// Renames in order (keeping what is replaced or deleted as a backup), then fsyncs every
    /// directory touched and the files asked for.
    private func applySteps(_ journal: BatchJournal, backedUp: Set<Int>, dirs: DirectoryCache, backend: IOBackend, durable: Bool, fsyncs: [String]) throws(PMLLError) {
        var touched = Set<Int32>()
        for (n, step) in journal.steps.enumerated() {
            let (parent, name) = PathGuard.split(step.path)
            let fd = try dirs.directory(parent, index: n)
            func rename(_ a: Int32, _ from: String, _ b: Int32, _ to: String) throws(PMLLError) {
                guard renameat(a, from, b, to) == 0 else { throw .batchFailed(index: n, path: step.path, errno: .current) }
                touched.insert(a)
                touched.insert(b)
                CrashPoint.hit("batch.renamed")
            }
            let backup = journal.backup(n)
            switch step.op {
            case .write, .replace:
                // Keep the old file as a hard link, then rename over it: readers always find
                // the target, old or new, never nothing.
                if step.existed && !backedUp.contains(n) {
                    guard linkat(fd, name, fd, backup, 0) == 0 else { throw .batchFailed(index: n, path: step.path, errno: .current) }
                    CrashPoint.hit("batch.linked")
                }
                try rename(fd, journal.temp(n), fd, name)
            case .delete:
                try rename(fd, name, fd, backup)
            case .rename:
                let (toParent, toName) = PathGuard.split(step.to!)
                let toFD = try dirs.directory(toParent, index: n)
                if step.toExisted { try rename(toFD, toName, toFD, backup) }
                try rename(fd, name, toFD, toName)
            case .mkdir:
                for dir in step.createdDirs { touched.insert(try dirs.directory(PathGuard.split(dir).parent, index: n)) }
            case .fsync: break
            }
        }
        var fds = durable ? Array(touched) : []
        var owned: [Int32] = []
        for path in fsyncs {
            let (parent, name) = PathGuard.split(path)
            let fd = openat(try dirs.directory(parent, index: 0), name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { throw .batchFailed(index: 0, path: path, errno: .current) }
            owned.append(fd)
        }
        defer { owned.forEach { close($0) } }
        fds += owned
        for (k, rc) in backend.fsync(fds).enumerated() where rc != 0 {
            throw .batchFailed(index: 0, path: k < fds.count - owned.count ? "(directory)" : fsyncs[k - (fds.count - owned.count)], errno: Errno(rawValue: -rc))
        }
    }

    /// Puts the tree back as it was before the batch, whatever phase it reached. Idempotent.
    func undo(_ journal: BatchJournal, dirs: DirectoryCache) {
        var touched = Set<Int32>()
        for (n, step) in journal.steps.enumerated().reversed() {
            let (parent, name) = PathGuard.split(step.path)
            guard let fd = try? dirs.directory(parent, index: 0) else { continue }
            touched.insert(fd)
            let has = { (n: String) in dirs.existsAt(fd, n) }
            let temp = journal.temp(n), backup = journal.backup(n)
            switch step.op {
            case .write, .replace:
                if has(backup) {
                    // Killed between the backup link and the rename: both names are the same
                    // old file, and rename(2) between two links of one file does nothing.
                    if dirs.sameFile(fd, backup, name) { unlinkat(fd, backup, 0) } else { renameat(fd, backup, fd, name) }
                } else if !step.existed && !has(temp) && has(name) {
                    unlinkat(fd, name, 0)
                }
                if has(temp) { unlinkat(fd, temp, 0) }
            case .delete:
                if has(backup) { renameat(fd, backup, fd, name) }
            case .rename:
                let (toParent, toName) = PathGuard.split(step.to!)
                guard let toFD = try? dirs.directory(toParent, index: 0) else { continue }
                touched.insert(toFD)
                if !has(name) && dirs.existsAt(toFD, toName) && (!step.toExisted || dirs.existsAt(toFD, backup)) {
                    renameat(toFD, toName, fd, name)
                }
                if dirs.existsAt(toFD, backup) { renameat(toFD, backup, toFD, toName) }
            case .mkdir:
                for dir in step.createdDirs.reversed() {
                    let (p, n) = PathGuard.split(dir)
                    if let pfd = try? dirs.directory(p, index: 0) { unlinkat(pfd, n, AT_REMOVEDIR); touched.insert(pfd) }
                }
            case .fsync: break
            }
        }
        _ = IOBackend.shared.fsync(Array(touched))
    }

    /// After the commit: drop the backups, all at once through the backend (removing the
    /// old inodes is the slow part on disk). A backup that is already gone (a repeated
    /// cleanup after a crash) is not an error.
    func cleanUp(_ journal: BatchJournal, dirs: DirectoryCache, backend: IOBackend = .shared) {
        var backups: [IOBackend.Entry] = []
        for (n, step) in journal.steps.enumerated() {
            let parent: [String]
            switch step.op {
            case .write, .replace, .delete: parent = PathGuard.split(step.path).parent
            case .rename: parent = PathGuard.split(step.to!).parent
            case .mkdir, .fsync: continue
            }
            if (step.op == .rename ? step.toExisted : step.existed), let fd = try? dirs.directory(parent, index: 0) {
                backups.append(.init(dirfd: fd, name: journal.backup(n)))
            }
        }
        for (k, rc) in backend.unlink(backups).enumerated() where rc != 0 && rc != -ENOENT {
            Self.logger.warning("cannot remove a batch backup", metadata: ["name": "\(backups[k].name)", "errno": "\(-rc)"])
        }
    }

    /// Each entry on its own. Runs of `write`s are created in one backend call, straight
    /// under their names (`O_EXCL`); a name that exists already, and every other entry, goes
    /// through a one-entry atomic step, in the batch's order.
    private func applyBestEffort(_ batch: FileBatch, dirs: DirectoryCache, backend: IOBackend, durable: Bool) -> [String] {
        var results = [String](repeating: "ok", count: batch.operations.count)
        var creates: [IOBackend.WriteItem] = [], createIndexes: [Int] = []
        for (n, op) in batch.operations.enumerated() {
            if case .write(let path, let data, let mode) = op, let fd = try? dirs.directory(PathGuard.split(path).parent, index: n) {
                creates.append(.init(dirfd: fd, name: PathGuard.split(path).name, data: data, mode: mode))
                createIndexes.append(n)
                continue
            }
            flush()
            results[n] = single(op, index: n)
        }
        flush()
        return results

        func flush() {
            guard !creates.isEmpty else { return }
            for (k, rc) in backend.writeFiles(creates, fsync: durable).enumerated() {
                let n = createIndexes[k]
                switch -rc {
                case 0:
                    if creates[k].mode & Self.umaskBits != 0 { _ = fchmodat(creates[k].dirfd, creates[k].name, mode_t(creates[k].mode), 0) }
                case EEXIST:
                    results[n] = single(batch.operations[n], index: n)
                default:
                    results[n] = "\(PMLLError.batchFailed(index: n, path: batch.operations[n].paths[0], errno: Errno(rawValue: -rc)))"
                }
            }
            creates.removeAll()
            createIndexes.removeAll()
        }

        /// Entry `index` as a one-entry atomic batch; errors name `index`, not 0.
        func single(_ op: FileBatch.Operation, index: Int) -> String {
            do throws(PMLLError) {
                let single = FileBatch([op])
                let journal = BatchJournal(id: String(UInt64.random(in: 0...UInt64.max), radix: 36), root: "", owner: token,
                                           phase: .staging, steps: try plan(single, dirs: dirs))
                do throws(PMLLError) {
                    let backedUp = try stage(single, journal: journal, dirs: dirs, backend: backend, durable: durable)
                    try applySteps(journal, backedUp: backedUp, dirs: dirs, backend: backend, durable: durable, fsyncs: { if case .fsync(let p) = op { [p] } else { [] } }())
                    cleanUp(journal, dirs: dirs, backend: backend)
                } catch {
                    undo(journal, dirs: dirs)
                    throw error
                }
                return "ok"
            } catch {
                switch error {
                case .invalidBatch(_, let reason): return "\(PMLLError.invalidBatch(index: index, reason: reason))"
                case .batchFailed(_, let path, let errno): return "\(PMLLError.batchFailed(index: index, path: path, errno: errno))"
                default: return "\(error)"
                }
            }
        }
    }

    // MARK: recovery

    /// Rolls back (or finishes cleaning up) the atomic batches of processes that are gone
    /// (only those below `root` if given). Runs before every `apply` (for its root), in
    /// `recover`, and on an open that reset the volatile state. Recoverers are serialised by an
    /// internal lock. Returns how many batches it handled.
    ///
    /// `ownersAreGone`: the caller knows every recorded owner is dead (this open reset the
    /// volatile state). Owner tokens must not be trusted then: after a power failure the
    /// process table's generations may have gone back, so a new process can be handed the
    /// very token a dead batch recorded (found by the crash suite's power-failure model).
    @discardableResult
    public func recoverFileBatches(ownersAreGone: Bool = false, root: String? = nil) throws(PMLLError) -> Int {
        guard store.blockCount > 0 else { return 0 }
        let keys = try committedKeys(prefix: Self.batchPrefix)
        guard !keys.isEmpty else { return 0 }
        let lock = try batchRecoveryLock()
        _ = try acquire(index: lock, deadline: .max, cancellation: nil)
        defer { release(index: lock) }
        var handled = 0
        for key in keys {
            guard let bytes = try readCommitted(key),
                  let journal = BatchJournal(decoding: bytes) else {
                Self.logger.error("unreadable file-batch journal left in place", metadata: ["key": "\(key)"])
                continue
            }
            if let root, journal.root != root { continue }
            if !ownersAreGone && journal.owner != 0 && processes.isAlive(journal.owner) { continue }   // still being applied
            let rootFD = Glibc.open(journal.root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard rootFD >= 0 else { continue }
            let dirs = DirectoryCache(root: rootFD)
            if journal.phase == .committed { cleanUp(journal, dirs: dirs) } else { undo(journal, dirs: dirs) }
            dirs.closeAll()
            close(rootFD)
            try internalTransaction { tx throws(PMLLError) in try tx.deleteInternal(key) }
            handled += 1
        }
        return handled
    }

    /// The lock that serialises batch recoverers (created on first use).
    func batchRecoveryLock() throws(PMLLError) -> UInt32 {
        try table.index(of: "pmll:batches", level: .network, create: true, creation: tableCreation, allowReserved: true)!
    }

    /// The process umask, read once (reading it means setting it, so only at first use).
    static let umaskBits: UInt32 = {
        let mask = umask(0o022)
        umask(mask)
        return UInt32(mask)
    }()

    static func absolute(_ path: String) -> String {
        guard let resolved = realpath(path, nil) else { return path }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}

/// Directory descriptors below a root, opened one component at a time without following
/// symlinks, cached for the batch.
final class DirectoryCache {
    let root: Int32
    private var cache: [String: Int32] = [:]

    init(root: Int32) { self.root = root }

    func directory(_ components: [String], index: Int) throws(PMLLError) -> Int32 {
        if components.isEmpty { return root }
        let key = components.joined(separator: "/")
        if let fd = cache[key] { return fd }
        let parent = try directory(Array(components.dropLast()), index: index)
        let fd = openat(parent, components.last!, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            let e = Errno.current
            if e == .tooManySymbolicLinkLevels || e == .notDirectory {
                throw .invalidBatch(index: index, reason: "'\(key)' is not a directory below the root (symlinks are not followed)")
            }
            throw .batchFailed(index: index, path: key, errno: e)
        }
        cache[key] = fd
        return fd
    }

    func exists(_ path: String) -> Bool {
        let (parent, name) = PathGuard.split(path)
        guard let fd = try? directory(parent, index: 0) else { return false }
        return existsAt(fd, name)
    }

    /// Both names are links to one file.
    func sameFile(_ fd: Int32, _ a: String, _ b: String) -> Bool {
        var sa = stat(), sb = stat()
        return fstatat(fd, a, &sa, AT_SYMLINK_NOFOLLOW) == 0 && fstatat(fd, b, &sb, AT_SYMLINK_NOFOLLOW) == 0
            && sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev
    }

    func existsAt(_ fd: Int32, _ name: String) -> Bool {
        var st = stat()
        return fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0
    }

    func closeAll() {
        cache.values.forEach { close($0) }
        cache.removeAll()
    }
}
