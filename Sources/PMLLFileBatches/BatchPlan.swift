package import PMLLCore

/// What is at a path before a batch, as far as planning cares.
package struct ExistingEntry: Equatable, Sendable {
    package var isDirectory: Bool
    package var inode: UInt64

    package init(isDirectory: Bool, inode: UInt64) {
        self.isDirectory = isDirectory
        self.inode = inode
    }
}

/// The steps of an atomic batch, planned before anything is touched. Pure: it sees the tree
/// only through `lookup` (what is at a path before the batch), so it is unit-tested directly.
///
/// Each step is planned against the tree as the earlier steps of the batch will have left it,
/// so that a step may use what an earlier one creates. `early`: the writes and replaces that
/// staging applies, because no earlier step touches their path; those that replace an
/// existing file are applied by exchange, and their step records the file's inode number.
package struct BatchPlan: Equatable {
    package var steps: [BatchStep] = []
    package var early = Set<Int>()

    package init(_ batch: FileBatch, lookup: (String) -> ExistingEntry?) throws(PMLLError) {
            var created = Set<String>(), removed = Set<String>(), touched = Set<String>(), createdDirs = Set<String>()
        /// What is at `path` before the batch, unless an earlier step created or removed it.
        func original(_ path: String) -> ExistingEntry? { created.contains(path) || removed.contains(path) ? nil : lookup(path) }
        // Writes, replaces and deletes act on files, and a rename does not replace a
        // directory: their backups are removed with unlink, which a directory would survive.
        func refuseDirectory(_ path: String, _ original: ExistingEntry?, _ n: Int) throws(PMLLError) {
            if createdDirs.contains(path) || original?.isDirectory == true {
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
                    step.oldInode = before?.inode ?? 0
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
                    if createdDirs.contains(prefix) { continue }
                    let existing = original(prefix)
                    guard !created.contains(prefix), existing?.isDirectory != false else {
                        throw .invalidBatch(index: n, reason: "'\(prefix)' exists and is not a directory (mkdir '\(path)')")
                    }
                    if existing == nil { step.createdDirs.append(prefix); created.insert(prefix); createdDirs.insert(prefix) }
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
    }
}
