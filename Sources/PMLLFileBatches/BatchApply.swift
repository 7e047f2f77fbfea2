import CPMLL
import Foundation
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif
public import PMLLCore
import PMLLLocks
import PMLLStore

/// What applying a batch did.
public struct BatchReport: Sendable, Codable, Equatable {
    public let backend: IOBackendKind
    /// How the batch created files on the root's filesystem (Docs/FileBatches.md).
    public let creation: FileCreation
    public let atomic: Bool
    /// "ok", or the error of that entry (non-atomic mode reports each; atomic mode fails whole).
    public let results: [String]
    public let nanoseconds: Int64
    /// Where an atomic batch spent its time (zero for best effort), for benchmarks and logs.
    public var phases = BatchPhases()
}

/// Nanoseconds per phase of an atomic batch (Docs/FileBatches.md, "Atomic protocol").
public struct BatchPhases: Sendable, Codable, Equatable {
    /// Writing the journal (one store transaction).
    public var journal: Int64 = 0
    /// Directories; new files written, linked, backed up, renamed into place where no earlier
    /// step touches their path, and fsynced one by one (small batches).
    public var stage: Int64 = 0
    /// The other steps in order, then the directory fsyncs or the syncfs, and requested fsyncs.
    public var apply: Int64 = 0
    /// The commit transaction.
    public var commit: Int64 = 0
    /// Removing the backups (their directories fsynced) and the journal.
    public var cleanUp: Int64 = 0
}

extension Pool {
    package static let batchPrefix = "pmll:batch/"

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
        let creation = IOBackend.creation(forDirectory: rootFD)
        if !atomic {
            let results = applyBestEffort(batch, dirs: dirs, backend: backend, creation: creation, durable: durable)
            return BatchReport(backend: backend.kind, creation: creation, atomic: false, results: results,
                               nanoseconds: Clock.monotonicNanoseconds - start)
        }
        let id = String(UInt64.random(in: 0...UInt64.max), radix: 36)
        let plan = try plan(batch, dirs: dirs)
        var journal = BatchJournal(id: id, root: Self.absolute(root), owner: token, phase: .staging, steps: plan.steps)
        var phases = BatchPhases(), mark = Clock.monotonicNanoseconds
        func lap(_ phase: WritableKeyPath<BatchPhases, Int64>) {
            let now = Clock.monotonicNanoseconds
            phases[keyPath: phase] = now - mark
            mark = now
        }
        try writeJournal(journal)
        lap(\.journal)
        var staging = Staging()
        let wholeFilesystem = Self.syncsWholeFilesystem(batch)
        do {
            staging = try stage(batch, journal: journal, early: plan.early, dirs: dirs, backend: backend, creation: creation, durable: durable,
                                wholeFilesystem: wholeFilesystem)
            lap(\.stage)
            CrashPoint.hit("batch.staged")
            try applySteps(journal, applied: staging.applied, dirs: dirs, backend: backend, durable: durable,
                           wholeFilesystem: wholeFilesystem,
                           fsyncs: batch.operations.compactMap { if case .fsync(let p) = $0 { p } else { nil } })
        } catch {
            staging.release()
            undo(journal, dirs: dirs)
            try? deleteJournal(id)
            throw error
        }
        lap(\.apply)
        journal.phase = .committed
        try writeJournal(journal)
        lap(\.commit)
        CrashPoint.hit("batch.committed")
        cleanUp(journal, dirs: dirs, held: staging.held, durable: durable)
        try deleteJournal(id)
        lap(\.cleanUp)
        return BatchReport(backend: backend.kind, creation: creation, atomic: true, results: batch.operations.map { _ in "ok" },
                           nanoseconds: Clock.monotonicNanoseconds - start, phases: phases)
    }

    // MARK: plan and journal

    /// Plans each step against the tree as the earlier steps of the batch will have left it,
    /// so that a step may use what an earlier one creates. `early`: the writes and replaces
    /// that staging applies, because no earlier step touches their path; those that replace an
    /// existing file are applied by exchange, and their step records the file's inode number.
    private func plan(_ batch: FileBatch, dirs: DirectoryCache) throws(PMLLError) -> (steps: [BatchStep], early: Set<Int>) {
        var steps: [BatchStep] = [], early = Set<Int>()
        var created = Set<String>(), removed = Set<String>(), touched = Set<String>(), createdDirs = Set<String>()
        /// What is at `path` before the batch, unless an earlier step created or removed it.
        func original(_ path: String) -> stat? { created.contains(path) || removed.contains(path) ? nil : dirs.status(path) }
        // Writes, replaces and deletes act on files, and a rename does not replace a
        // directory: their backups are removed with unlink, which a directory would survive.
        func refuseDirectory(_ path: String, _ original: stat?, _ n: Int) throws(PMLLError) {
            if createdDirs.contains(path) || original.map({ $0.st_mode & S_IFMT == S_IFDIR }) == true {
                throw .invalidBatch(index: n, reason: "'\(path)' is a directory (write, replace and delete act on files, and rename does not replace a directory)")
            }
        }
        for (n, op) in batch.operations.enumerated() {
            let path = op.paths[0], before = original(path)
            var step = BatchStep(op: .fsync, path: path, to: nil, existed: created.contains(path) || before != nil, toExisted: false, createdDirs: [])
            defer { touched.formUnion(op.paths + step.createdDirs) }
            switch op {
            case .write, .replace:
                if case .replace = op { step.op = .replace } else { step.op = .write }
                try refuseDirectory(path, before, n)
                guard step.existed || step.op == .write else { throw .invalidBatch(index: n, reason: "'\(path)' does not exist (replace needs an existing file)") }
                if !touched.contains(path) {
                    early.insert(n)
                    step.oldInode = before.map { UInt64($0.st_ino) } ?? 0
                }
                created.insert(path); removed.remove(path)
            case .delete:
                step.op = .delete
                guard step.existed else { throw .invalidBatch(index: n, reason: "'\(path)' does not exist") }
                try refuseDirectory(path, before, n)
                removed.insert(path); created.remove(path)
            case .mkdir:
                step.op = .mkdir
                var prefix = ""
                for component in path.split(separator: "/") {
                    prefix = prefix.isEmpty ? String(component) : prefix + "/" + component
                    if !created.contains(prefix) && original(prefix) == nil { step.createdDirs.append(prefix); created.insert(prefix); createdDirs.insert(prefix) }
                }
            case .rename(let from, let to):
                step.op = .rename
                step.to = to
                let target = original(to)
                step.toExisted = created.contains(to) || target != nil
                guard step.existed else { throw .invalidBatch(index: n, reason: "'\(from)' does not exist") }
                if step.toExisted { try refuseDirectory(to, target, n) }
                if createdDirs.remove(from) != nil { createdDirs.insert(to) }
                removed.insert(from); created.remove(from)
                created.insert(to); removed.remove(to)
            case .fsync: break
            }
            steps.append(step)
        }
        return (steps, early)
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

    /// What staging did: the steps it applied already, and the old files it holds open.
    package struct Staging {
        package var applied = Set<Int>()
        package var held: [Int: Int32] = [:]

        package func release() { InodeRelease.release(Array(held.values)) }
    }

    /// Creates the planned directories, then writes every new content next to its target,
    /// through the backend, fsynced one by one if `durable` and the batch does not sync its
    /// `wholeFilesystem`. The `early` steps (no earlier step touches their path) are applied
    /// right there, in parallel with the other files: exchanged with their target, or renamed
    /// into place (undo needs only the journal and the backups, whichever order they ran in).
    /// The other new contents wait at their temporary names for `applySteps`.
    private func stage(_ batch: FileBatch, journal: BatchJournal, early: Set<Int>, dirs: DirectoryCache, backend: IOBackend, creation: FileCreation,
                       durable: Bool, wholeFilesystem: Bool) throws(PMLLError) -> Staging {
        for (n, op) in batch.operations.enumerated() {
            guard case .mkdir(_, let mode) = op else { continue }
            for dir in journal.steps[n].createdDirs {
                let (parent, name) = PathGuard.split(dir)
                let fd = try dirs.directory(parent, index: n)
                if mkdirat(fd, name, mode_t(mode)) != 0 && errno != EEXIST { throw .batchFailed(index: n, path: dir, errno: .current) }
            }
        }
        var items: [IOBackend.WriteItem] = [], indexes: [Int] = []
        var staging = Staging(applied: early), holding = 0
        for (n, op) in batch.operations.enumerated() {
            switch op {
            case .write(let path, let data, let mode), .replace(let path, let data, let mode):
                let (parent, name) = PathGuard.split(path)
                var item = IOBackend.WriteItem(dirfd: try dirs.directory(parent, index: n), name: journal.temp(n), data: data, mode: mode)
                item.exactMode = mode & Self.umaskBits != 0
                if early.contains(n) && journal.steps[n].oldInode != 0 {
                    // Linked at the backup name, then exchanged with the target: one directory
                    // operation instead of a backup link and a rename.
                    item.name = journal.backup(n)
                    item.exchange = (name, journal.temp(n))
                    item.hold = holding < InodeRelease.limit
                    holding += item.hold ? 1 : 0
                } else if early.contains(n) {
                    item.final = name
                }
                items.append(item)
                indexes.append(n)
            default: continue
            }
        }
        let staged = backend.stageFiles(items, fsync: durable && !wholeFilesystem, creation: creation)
        for (k, fd) in staged.held.enumerated() where fd >= 0 { staging.held[indexes[k]] = fd }
        for (k, rc) in staged.results.enumerated() where rc != 0 {
            staging.release()
            throw .batchFailed(index: indexes[k], path: journal.steps[indexes[k]].path, errno: Errno(rawValue: -rc))
        }
        return staging
    }

    /// Applies the steps staging did not, in order (keeping what is replaced or deleted as a
    /// backup). Then makes everything durable: one syncfs per filesystem touched
    /// (`wholeFilesystem`) or an fsync of every directory touched; and the files asked for.
    private func applySteps(_ journal: BatchJournal, applied: Set<Int>, dirs: DirectoryCache, backend: IOBackend, durable: Bool,
                            wholeFilesystem: Bool, fsyncs: [String]) throws(PMLLError) {
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
            if applied.contains(n) {
                touched.insert(fd)
                continue
            }
            let backup = journal.backup(n)
            switch step.op {
            case .write, .replace:
                // Keep the old file as a hard link, then rename over it: readers always find
                // the target, old or new, never nothing.
                if step.existed {
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
        if durable && wholeFilesystem {
            var devices = Set<UInt64>()
            for fd in fds {
                var st = stat()
                guard fstat(fd, &st) == 0, devices.insert(UInt64(st.st_dev)).inserted else { continue }
                let rc = pmll_syncfs(fd)
                if rc != 0 { throw .batchFailed(index: 0, path: "(file system)", errno: Errno(rawValue: -rc)) }
            }
            fds = []
        }
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
    package func undo(_ journal: BatchJournal, dirs: DirectoryCache) {
        var touched = Set<Int32>()
        for (n, step) in journal.steps.enumerated().reversed() {
            let (parent, name) = PathGuard.split(step.path)
            guard let fd = try? dirs.directory(parent, index: 0) else { continue }
            touched.insert(fd)
            let has = { (n: String) in dirs.existsAt(fd, n) }
            let temp = journal.temp(n), backup = journal.backup(n)
            switch step.op {
            case .write where step.oldInode != 0, .replace where step.oldInode != 0:
                // Applied by exchange: the backup name holds the old file once the exchange
                // happened, the new one before.
                if has(backup) {
                    let old = dirs.inode(fd, backup) == step.oldInode
                    if old && dirs.inode(fd, name) == step.oldInode { unlinkat(fd, backup, 0) }   // exchange fallback: linked, not renamed
                    else if old { renameat(fd, backup, fd, name) }
                    else { unlinkat(fd, backup, 0) }
                }
                if has(temp) { unlinkat(fd, temp, 0) }
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

    /// After the commit: drop the backups. Freeing the old inodes is the slow part on disk:
    /// those in `held` (step index to an open descriptor of the old file) cost only the name
    /// here, removed in place, and `InodeRelease` frees them later; the others are removed all
    /// at once through the backend, so their frees overlap. Then the directories are fsynced
    /// (`durable`): the journal is deleted next, and a removal that a power failure undid
    /// would leave a backup nobody knows of. A backup that is already gone (a repeated cleanup
    /// after a crash) is not an error.
    package func cleanUp(_ journal: BatchJournal, dirs: DirectoryCache, backend: IOBackend = .shared, held: [Int: Int32] = [:], durable: Bool = true) {
        defer { InodeRelease.release(Array(held.values)) }
        var removed: [IOBackend.Entry] = [], results: [Int32] = [], others: [IOBackend.Entry] = []
        var touched = Set<Int32>()
        for (n, step) in journal.steps.enumerated() {
            let parent: [String]
            switch step.op {
            case .write, .replace, .delete: parent = PathGuard.split(step.path).parent
            case .rename: parent = PathGuard.split(step.to!).parent
            case .mkdir, .fsync: continue
            }
            guard step.op == .rename ? step.toExisted : step.existed, let fd = try? dirs.directory(parent, index: 0) else { continue }
            touched.insert(fd)
            let entry = IOBackend.Entry(dirfd: fd, name: journal.backup(n))
            if held[n] != nil {
                removed.append(entry)
                results.append(unlinkat(fd, entry.name, 0) == 0 ? 0 : -errno)
            } else {
                others.append(entry)
            }
        }
        removed += others
        results += backend.unlink(others)
        for (entry, rc) in zip(removed, results) where rc != 0 && rc != -ENOENT {
            Self.logger.warning("cannot remove a batch backup", metadata: ["name": "\(entry.name)", "errno": "\(-rc)"])
        }
        if durable { _ = backend.fsync(Array(touched)) }
    }

    /// Each entry on its own. Runs of `write`s are created in one backend call, straight
    /// under their names (`O_EXCL`); a name that exists already, and every other entry, goes
    /// through a one-entry atomic step, in the batch's order.
    private func applyBestEffort(_ batch: FileBatch, dirs: DirectoryCache, backend: IOBackend, creation: FileCreation, durable: Bool) -> [String] {
        var results = [String](repeating: "ok", count: batch.operations.count)
        var creates: [IOBackend.WriteItem] = [], createIndexes: [Int] = []
        for (n, op) in batch.operations.enumerated() {
            if case .write(let path, let data, let mode) = op, let fd = try? dirs.directory(PathGuard.split(path).parent, index: n) {
                var item = IOBackend.WriteItem(dirfd: fd, name: PathGuard.split(path).name, data: data, mode: mode)
                item.exactMode = mode & Self.umaskBits != 0
                creates.append(item)
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
            for (k, rc) in backend.writeFiles(creates, fsync: durable, creation: creation).enumerated() {
                let n = createIndexes[k]
                switch -rc {
                case 0: break
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
                let plan = try plan(single, dirs: dirs)
                let journal = BatchJournal(id: String(UInt64.random(in: 0...UInt64.max), radix: 36), root: "", owner: token,
                                           phase: .staging, steps: plan.steps)
                var staging = Staging()
                let wholeFilesystem = Self.syncsWholeFilesystem(single)
                do throws(PMLLError) {
                    staging = try stage(single, journal: journal, early: plan.early, dirs: dirs, backend: backend, creation: creation, durable: durable,
                                        wholeFilesystem: wholeFilesystem)
                    try applySteps(journal, applied: staging.applied, dirs: dirs, backend: backend, durable: durable,
                                   wholeFilesystem: wholeFilesystem, fsyncs: { if case .fsync(let p) = op { [p] } else { [] } }())
                    cleanUp(journal, dirs: dirs, backend: backend, held: staging.held, durable: durable)
                } catch {
                    staging.release()
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
    package func batchRecoveryLock() throws(PMLLError) -> UInt32 {
        try table.index(of: "pmll:batches", level: .network, create: true, creation: tableCreation, allowReserved: true)!
    }

    /// How an atomic batch makes its changes durable before it commits: an fsync of each new
    /// file and each directory touched, or one `syncfs(2)` per filesystem. One syncfs costs
    /// about one journal commit (0.4–1.3 ms on this VM's ext4) however many files there are,
    /// where 200 fsyncs cost 4–10 ms even in parallel; but it also writes back whatever else
    /// is dirty on that filesystem. So batches that stage at least `syncFilesystemFrom` files
    /// use it, smaller ones fsync each file. `PMLL_BATCH_SYNC=files|filesystem` forces one.
    package static let syncFilesystemFrom = 16
    package static let forcedSync = getenv("PMLL_BATCH_SYNC").map { String(cString: $0) }

    package static func syncsWholeFilesystem(_ batch: FileBatch) -> Bool {
        switch forcedSync {
        case "files": return false
        case "filesystem": return true
        default:
            return batch.operations.count(where: \.writesContent) >= syncFilesystemFrom
        }
    }

    /// The process umask, read once (reading it means setting it, so only at first use).
    package static let umaskBits: UInt32 = {
        let mask = umask(0o022)
        umask(mask)
        return UInt32(mask)
    }()

    package static func absolute(_ path: String) -> String {
        guard let resolved = realpath(path, nil) else { return path }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}

/// Directory descriptors below a root, opened one component at a time without following
/// symlinks, cached for the batch.
package final class DirectoryCache {
    package let root: Int32
    private var cache: [String: Int32] = [:]

    package init(root: Int32) { self.root = root }

    package func directory(_ components: [String], index: Int) throws(PMLLError) -> Int32 {
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

    /// What `path` itself is (not followed), or nil if nothing is there.
    func status(_ path: String) -> stat? {
        let (parent, name) = PathGuard.split(path)
        guard let fd = try? directory(parent, index: 0) else { return nil }
        return status(fd, name)
    }

    func status(_ fd: Int32, _ name: String) -> stat? {
        var st = stat()
        return fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 ? st : nil
    }

    package func existsAt(_ fd: Int32, _ name: String) -> Bool { status(fd, name) != nil }

    package func inode(_ fd: Int32, _ name: String) -> UInt64? { status(fd, name).map { UInt64($0.st_ino) } }

    /// Both names are links to one file.
    package func sameFile(_ fd: Int32, _ a: String, _ b: String) -> Bool {
        guard let sa = status(fd, a), let sb = status(fd, b) else { return false }
        return sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev
    }

    package func closeAll() {
        cache.values.forEach { close($0) }
        cache.removeAll()
    }
}
