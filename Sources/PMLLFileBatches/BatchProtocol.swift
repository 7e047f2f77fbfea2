import CPMLL
public import SystemPackage
#if canImport(Glibc)
import Glibc
#endif
public import PMLLCore
import PMLLLocks
import PMLLStore

extension Pool {
    package static let batchPrefix = StateStore.journalPrefix

    /// Applies `batch` below `root`. Atomic: after success every operation is durable; after
    /// a failure, or a crash followed by recovery (on open or `pmll recover`), the tree is
    /// exactly as before. Non-atomic: best effort, one result per entry. `durable: false`
    /// skips the fsyncs (for scratch trees; atomicity against process crashes remains).
    public func apply(_ batch: FileBatch, root: FilePath, atomic: Bool = true, durable: Bool = true) throws(PMLLError) -> BatchReport {
        try apply(batch, root: root.string, atomic: atomic, durable: durable)
    }

    /// ``apply(_:root:atomic:durable:)-(_,FilePath,_,_)`` with the root as a string.
    public func apply(_ batch: FileBatch, root: String, atomic: Bool = true, durable: Bool = true) throws(PMLLError) -> BatchReport {
        let what = "root '\(root)', \(batch.operations.count) entries, \(atomic ? "atomic" : "best effort")"
        let request = AccessRequest.batch(root: Self.absolute(root))
        try access.check(self, request)
        try access.requireSignature(self, request, signer: batch.signer, subject: "file batch for root '\(root)'")
        do {
            let report = try applyBatch(batch, root: root, atomic: atomic, durable: durable)
            let failed = report.results.filter { !$0.isApplied }.count
            audit(.batchApply, failed == 0 ? .ok : .failed, what + (failed == 0 ? "" : ": \(failed) entries failed"))
            return report
        } catch {
            audit(.batchApply, .failed, what + ": \(error)")
            throw error
        }
    }

    private func applyBatch(_ batch: FileBatch, root: String, atomic: Bool, durable: Bool) throws(PMLLError) -> BatchReport {
        try batch.validate()
        let start = Clock.monotonicNanoseconds
        let rootFD: FileDescriptor
        do {
            rootFD = try FileDescriptor.open(FilePath(root), .readOnly, options: [.directory, .closeOnExec])
        } catch {
            let e = Errno(error)
            throw .invalidBatchRoot(path: root, reason: e == .permissionDenied ? "permission denied" : e.description)
        }
        defer { try? rootFD.close() }
        // A dead process's half-applied batch on this tree is undone first. The caller holds
        // whatever serialises work on the tree (its lock, its queue turn), so nobody else is
        // changing it now.
        let earlier = try fileBatchRecovery(root: Self.absolute(root))
        if let stuck = earlier.needsAttention.first {
            throw .batchNeedsAttention(batch: stuck.id, root: stuck.root, reason: "an earlier batch on this tree is not rolled back (\(stuck.reason)); nothing was applied")
        }
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
        let plan = try BatchPlan(batch, lookup: dirs.entry)
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
            let failures = undo(journal, dirs: dirs)
            guard failures.isEmpty else {
                // The tree is not back to what it was: keep the journal, with no owner so that
                // any recovery (ours included) tries the rollback again, and say so.
                let reason = "applying failed (\(error)); rolling back failed: \(failures.map(\.description).joined(separator: "; "))"
                journal.owner = nil
                try? writeJournal(journal)
                try? recordAttention(BatchAttention(id: id, root: journal.root, reason: reason))
                throw PMLLError.batchNeedsAttention(batch: id, root: journal.root, reason: reason)
            }
            try? deleteJournal(id)
            throw error
        }
        lap(\.apply)
        journal.phase = .committed
        try writeJournal(journal)
        lap(\.commit)
        CrashPoint.hit("batch.committed")
        let leftovers = cleanUp(journal, dirs: dirs, held: staging.held, durable: durable)
        if leftovers.isEmpty {
            try deleteJournal(id)
        } else {
            // Committed and durable; only backups are left. The journal stays, ownerless, so
            // that recovery removes them later.
            journal.owner = nil
            try? writeJournal(journal)
            try? recordAttention(BatchAttention(id: id, root: journal.root, reason: "backups left after the commit: \(leftovers.map(\.description).joined(separator: "; "))"))
        }
        lap(\.cleanUp)
        return BatchReport(backend: backend.kind, creation: creation, atomic: true, results: batch.operations.map { _ in .applied },
                           nanoseconds: Clock.monotonicNanoseconds - start, phases: phases)
    }

    // MARK: plan and journal

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
    func stage(_ batch: FileBatch, journal: BatchJournal, early: Set<Int>, dirs: DirectoryCache, backend: IOBackend, creation: FileCreation,
                       durable: Bool, wholeFilesystem: Bool) throws(PMLLError) -> Staging {
        for (n, op) in batch.operations.enumerated() {
            guard case .mkdir(_, let mode) = op else { continue }
            for dir in journal.steps[n].createdDirs {
                let (parent, name) = PathGuard.split(dir)
                let fd = try dirs.directory(parent, index: n)
                if mkdirat(fd.rawValue, name, mode_t(mode)) != 0 && errno != EEXIST { throw .batchFailed(index: n, path: dir, errno: .current) }
            }
        }
        var items: [IOBackend.WriteItem] = [], indexes: [Int] = []
        var staging = Staging(applied: early), holding = 0
        for (n, op) in batch.operations.enumerated() {
            switch op {
            case .write(let path, let data, let mode), .replace(let path, let data, let mode):
                let (parent, name) = PathGuard.split(path)
                var item = IOBackend.WriteItem(directory: try dirs.directory(parent, index: n), name: journal.temp(n), data: data, mode: mode)
                item.exactMode = mode & Self.umaskBits != 0
                item.milestone = Self.crashPoint
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
    func applySteps(_ journal: BatchJournal, applied: Set<Int>, dirs: DirectoryCache, backend: IOBackend, durable: Bool,
                            wholeFilesystem: Bool, fsyncs: [String]) throws(PMLLError) {
        var touched = Set<FileDescriptor>()
        for (n, step) in journal.steps.enumerated() {
            let (parent, name) = PathGuard.split(step.path)
            let fd = try dirs.directory(parent, index: n)
            func rename(_ a: FileDescriptor, _ from: String, _ b: FileDescriptor, _ to: String) throws(PMLLError) {
                guard renameat(a.rawValue, from, b.rawValue, to) == 0 else { throw .batchFailed(index: n, path: step.path, errno: .current) }
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
                    guard linkat(fd.rawValue, name, fd.rawValue, backup, 0) == 0 else { throw .batchFailed(index: n, path: step.path, errno: .current) }
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
                guard fstat(fd.rawValue, &st) == 0, devices.insert(UInt64(st.st_dev)).inserted else { continue }
                let rc = pmll_syncfs(fd.rawValue)
                if rc != 0 { throw .batchFailed(index: 0, path: "(file system)", errno: Errno(rawValue: -rc)) }
            }
            fds = []
        }
        var owned: [FileDescriptor] = []
        for path in fsyncs {
            let (parent, name) = PathGuard.split(path)
            let fd = openat(try dirs.directory(parent, index: 0).rawValue, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { throw .batchFailed(index: 0, path: path, errno: .current) }
            owned.append(FileDescriptor(rawValue: fd))
        }
        defer { owned.forEach { try? $0.close() } }
        fds += owned
        for (k, rc) in backend.fsync(fds).enumerated() where rc != 0 {
            throw .batchFailed(index: 0, path: k < fds.count - owned.count ? "(directory)" : fsyncs[k - (fds.count - owned.count)], errno: Errno(rawValue: -rc))
        }
    }

    /// Puts the tree back as it was before the batch, whatever phase it reached. Idempotent.
    /// Returns every change it could not undo (empty: the tree is as it was).
    package func undo(_ journal: BatchJournal, dirs: DirectoryCache) -> [RollbackFailure] {
        var touched = Set<FileDescriptor>()
        var failures: [RollbackFailure] = []
        for (n, step) in journal.steps.enumerated().reversed() {
            // A call that fails leaves that step's change in place (ENOENT from an unlink:
            // already gone, which is what undo wants).
            func attempt(_ call: String, _ path: String, _ rc: Int32) {
                if rc != 0 && !(call == "unlink" && errno == ENOENT) { failures.append(RollbackFailure(step: n, path: path, call: call, errno: errno)) }
            }
            let (parent, name) = PathGuard.split(step.path)
            let fd: FileDescriptor
            do { fd = try dirs.directory(parent, index: n) } catch {
                if let failure = RollbackFailure(opening: error, step: n, path: step.path) { failures.append(failure) }
                continue
            }
            touched.insert(fd)
            let has = { (n: String) in dirs.existsAt(fd, n) }
            let temp = journal.temp(n), backup = journal.backup(n)
            switch step.op {
            case .write where step.oldInode != 0, .replace where step.oldInode != 0:
                // Applied by exchange: the backup name holds the old file once the exchange
                // happened, the new one before.
                if has(backup) {
                    let old = dirs.inode(fd, backup) == step.oldInode
                    if old && dirs.inode(fd, name) == step.oldInode { attempt("unlink", step.path, unlinkat(fd.rawValue, backup, 0)) }   // exchange fallback: linked, not renamed
                    else if old { attempt("rename", step.path, renameat(fd.rawValue, backup, fd.rawValue, name)) }
                    else { attempt("unlink", step.path, unlinkat(fd.rawValue, backup, 0)) }
                }
                if has(temp) { attempt("unlink", step.path, unlinkat(fd.rawValue, temp, 0)) }
            case .write, .replace:
                if has(backup) {
                    // Killed between the backup link and the rename: both names are the same
                    // old file, and rename(2) between two links of one file does nothing.
                    if dirs.sameFile(fd, backup, name) { attempt("unlink", step.path, unlinkat(fd.rawValue, backup, 0)) }
                    else { attempt("rename", step.path, renameat(fd.rawValue, backup, fd.rawValue, name)) }
                } else if !step.existed && !has(temp) && has(name) {
                    attempt("unlink", step.path, unlinkat(fd.rawValue, name, 0))
                }
                if has(temp) { attempt("unlink", step.path, unlinkat(fd.rawValue, temp, 0)) }
            case .delete:
                if has(backup) { attempt("rename", step.path, renameat(fd.rawValue, backup, fd.rawValue, name)) }
            case .rename:
                let (toParent, toName) = PathGuard.split(step.to!)
                let toFD: FileDescriptor
                do { toFD = try dirs.directory(toParent, index: n) } catch {
                    if let failure = RollbackFailure(opening: error, step: n, path: step.to!) { failures.append(failure) }
                    continue
                }
                touched.insert(toFD)
                if !has(name) && dirs.existsAt(toFD, toName) && (!step.toExisted || dirs.existsAt(toFD, backup)) {
                    attempt("rename", step.path, renameat(toFD.rawValue, toName, fd.rawValue, name))
                }
                if dirs.existsAt(toFD, backup) { attempt("rename", step.to!, renameat(toFD.rawValue, backup, toFD.rawValue, toName)) }
            case .mkdir:
                for dir in step.createdDirs.reversed() {
                    let (p, n) = PathGuard.split(dir)
                    guard let pfd = try? dirs.directory(p, index: 0), dirs.existsAt(pfd, n) else { continue }
                    attempt("rmdir", dir, unlinkat(pfd.rawValue, n, AT_REMOVEDIR))
                    touched.insert(pfd)
                }
            case .fsync: break
            }
        }
        for rc in IOBackend.shared.fsync(Array(touched)) where rc != 0 {
            failures.append(RollbackFailure(step: -1, path: journal.root, call: "fsync of a directory", errno: -rc))
        }
        return failures
    }

    /// After the commit: drop the backups. Freeing the old inodes is the slow part on disk:
    /// those in `held` (step index to an open descriptor of the old file) cost only the name
    /// here, removed in place, and `InodeRelease` frees them later; the others are removed all
    /// at once through the backend, so their frees overlap. Then the directories are fsynced
    /// (`durable`): the journal is deleted next, and a removal that a power failure undid
    /// would leave a backup nobody knows of. A backup that is already gone (a repeated cleanup
    /// after a crash) is not an error.
    @discardableResult
    package func cleanUp(_ journal: BatchJournal, dirs: DirectoryCache, backend: IOBackend = .shared, held: [Int: Int32] = [:], durable: Bool = true) -> [RollbackFailure] {
        defer { InodeRelease.release(Array(held.values)) }
        var removed: [IOBackend.Entry] = [], results: [Int32] = [], others: [IOBackend.Entry] = [], steps: [Int] = [], otherSteps: [Int] = []
        var failures: [RollbackFailure] = []
        var touched = Set<FileDescriptor>()
        for (n, step) in journal.steps.enumerated() {
            let parent: [String]
            switch step.op {
            case .write, .replace, .delete: parent = PathGuard.split(step.path).parent
            case .rename: parent = PathGuard.split(step.to!).parent
            case .mkdir, .fsync: continue
            }
            guard step.op == .rename ? step.toExisted : step.existed else { continue }
            let fd: FileDescriptor
            do { fd = try dirs.directory(parent, index: n) } catch {
                if let failure = RollbackFailure(opening: error, step: n, path: step.path) { failures.append(failure) }
                continue
            }
            touched.insert(fd)
            let entry = IOBackend.Entry(directory: fd, name: journal.backup(n))
            if held[n] != nil {
                removed.append(entry)
                steps.append(n)
                results.append(unlinkat(fd.rawValue, entry.name, 0) == 0 ? 0 : -errno)
            } else {
                others.append(entry)
                otherSteps.append(n)
            }
        }
        removed += others
        steps += otherSteps
        results += backend.unlink(others)
        for (k, rc) in results.enumerated() where rc != 0 && rc != -ENOENT {
            failures.append(RollbackFailure(step: steps[k], path: removed[k].name, call: "unlink", errno: -rc))
        }
        if durable {
            for rc in backend.fsync(Array(touched)) where rc != 0 {
                failures.append(RollbackFailure(step: -1, path: journal.root, call: "fsync of a directory", errno: -rc))
            }
        }
        return failures
    }

    /// The protocol's crash points for what the backend does while staging (the same points
    /// as for the steps applied in order).
    package static let crashPoint: @Sendable (IOBackend.StagingMilestone) -> Void = { milestone in
        switch milestone {
        case .linked: CrashPoint.hit("batch.linked")
        case .renamed: CrashPoint.hit("batch.renamed")
        }
    }

    /// How an atomic batch makes its changes durable before it commits: an fsync of each new
    /// file and each directory touched, or one `syncfs(2)` per filesystem. One syncfs costs
    /// about one journal commit however many files there are, where hundreds of fsyncs cost
    /// several even in parallel (Docs/FileBatches.md); but it also writes back whatever else
    /// is dirty on that filesystem. So batches that stage at least `syncFilesystemFrom` files
    /// use it, smaller ones fsync each file. `PMLL_BATCH_SYNC=files|filesystem` forces one.
    package static let syncFilesystemFrom = 16
    package static let forcedSync = Knob.batchSync.value

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
