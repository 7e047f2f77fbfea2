import PMLLCore
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

extension Pool {
    /// Each entry on its own. Runs of `write`s are created in one backend call, straight
    /// under their names (`O_EXCL`); a name that exists already, and every other entry, goes
    /// through a one-entry atomic step, in the batch's order.
    func applyBestEffort(_ batch: FileBatch, dirs: DirectoryCache, backend: IOBackend, creation: FileCreation, durable: Bool) -> [BatchEntryResult] {
        var results = [BatchEntryResult](repeating: .applied, count: batch.operations.count)
        var creates: [IOBackend.WriteItem] = [], createIndexes: [Int] = []
        for (n, op) in batch.operations.enumerated() {
            if case .write(let path, let data, let mode) = op, let fd = try? dirs.directory(PathGuard.split(path).parent, index: n) {
                var item = IOBackend.WriteItem(directory: fd, name: PathGuard.split(path).name, data: data, mode: mode)
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
                    results[n] = .failed(BatchEntryError(.batchFailed(index: n, path: batch.operations[n].paths[0], errno: Errno(rawValue: -rc))))
                }
            }
            creates.removeAll()
            createIndexes.removeAll()
        }

        /// Entry `index` as a one-entry atomic batch; errors name `index`, not 0.
        func single(_ op: FileBatch.Operation, index: Int) -> BatchEntryResult {
            do throws(PMLLError) {
                let single = FileBatch([op])
                let plan = try BatchPlan(single, lookup: dirs.entry)
                let journal = BatchJournal(id: String(UInt64.random(in: 0...UInt64.max), radix: 36), root: "", owner: token,
                                           phase: .staging, steps: plan.steps)
                var staging = Staging()
                let wholeFilesystem = Self.syncsWholeFilesystem(single)
                do throws(PMLLError) {
                    staging = try stage(single, journal: journal, early: plan.early, dirs: dirs, backend: backend, creation: creation, durable: durable,
                                        wholeFilesystem: wholeFilesystem)
                    try applySteps(journal, applied: staging.applied, dirs: dirs, backend: backend, durable: durable,
                                   wholeFilesystem: wholeFilesystem, fsyncs: { if case .fsync(let p) = op { [p] } else { [] } }())
                    let leftovers = cleanUp(journal, dirs: dirs, backend: backend, held: staging.held, durable: durable)
                    if !leftovers.isEmpty {
                        Self.logger.warning("cannot remove a batch backup", metadata: ["failures": "\(leftovers)"])
                    }
                } catch {
                    staging.release()
                    let failures = undo(journal, dirs: dirs)
                    guard failures.isEmpty else {
                        throw PMLLError.batchNeedsAttention(batch: journal.id, root: ".", reason: "entry \(index) failed (\(error)) and rolling it back failed: \(failures.map(\.description).joined(separator: "; "))")
                    }
                    throw error
                }
                return .applied
            } catch {
                switch error {
                case .invalidBatch(_, let reason): return .failed(BatchEntryError(.invalidBatch(index: index, reason: reason)))
                case .batchFailed(_, let path, let errno): return .failed(BatchEntryError(.batchFailed(index: index, path: path, errno: errno)))
                default: return .failed(BatchEntryError(error))
                }
            }
        }
    }
}
