#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import PMLL

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the pool's locks and attached processes.",
        discussion: "The --json form is a stable contract, documented in Docs/CLI.md.\n\n\(ExitStatus.summary)"
    )

    @OptionGroup var poolArguments: PoolArguments

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func run() throws {
        let pool = try poolArguments.openForReading()
        // Our own attachment is not interesting to the reader.
        let status = pool.status(includingSelf: false)
        if json {
            try printJSON(status)
        } else {
            print(StatusTable.render(status))
        }
    }
}

enum StatusTable {
    static func bytes(_ n: Int) -> String {
        n >= 1 << 30 ? "\((Double(n) / Double(1 << 30)).fixed(1)) GiB" : n >= 1 << 20 ? "\((Double(n) / Double(1 << 20)).fixed(1)) MiB" : "\(n / 1024) KiB"
    }

    /// The redo log's flushes since it was made, if any: the group commit at work.
    static func flushes(_ u: StoreUsage) -> String {
        guard u.redoFlushes > 0 else { return "" }
        let n = Double(u.redoFlushes)
        return ", \(u.redoFlushes) flush\(u.redoFlushes == 1 ? "" : "es") covering \((Double(u.redoFlushedCommits) / n).fixed(2)) commits each " +
            "(\((Double(u.redoFlushNanoseconds) / n / 1e3).fixed(1)) µs each, after \((Double(u.redoGroupWaitNanoseconds) / n / 1e3).fixed(1)) µs waiting for the group)"
    }

    static func render(_ s: PoolStatus) -> String {
        var out = "pool \(s.path): format \(s.formatVersion), \(s.sizeBytes / 1024) KiB, " +
            "\(s.processes.filter(\.alive).count)/\(s.processCapacity) processes attached" +
            (s.processes.contains { !$0.alive } ? " (+\(s.processes.filter { !$0.alive }.count) dead)" : "") +
            ", \(s.locks.count)/\(s.lockCapacity) locks, \(s.queues.count)/\(s.queueCapacity) queues" +
            (s.persistentMemory ? ", persistent memory" : "") + (s.readOnlyView ? " (read-only view)" : "") + "\n"
        if let u = s.store {
            out += "state store: \(u.keysUsed)/\(u.keyCapacity) key slots (\(u.keySlotBytes) bytes), \(u.blocksUsed * u.blockSize / 1024) KiB used, " +
                "\((u.blockCount - u.blocksUsed) * u.blockSize / 1024) KiB free of \(u.blockCount * u.blockSize / 1024) KiB; " +
                "file \(Self.bytes(u.fileBytes)) of its \(Self.bytes(u.sizeLimit)) limit (created \(Self.bytes(u.createdBytes)), " +
                "\(u.growths) growth\(u.growths == 1 ? "" : "s")" + (u.freeAreaBytes > 0 ? ", \(Self.bytes(u.freeAreaBytes)) in unused areas" : "") + ")" +
                (u.redoLogBytes > 0 ? "; redo log \(Self.bytes(u.redoLogBytes)), \(Self.bytes(u.redoUnsettledBytes)) not yet settled" + Self.flushes(u) : "") + "\n"
        }
        if let c = s.lastCheck {
            out += "scheduled checks: \(c.runs) run, \(c.failures) found problems; last by pid \(c.pid) " +
                (c.ok ? "ok" : "FOUND PROBLEMS: \(c.problems.first ?? "")") + " (\((Double(c.durationNanoseconds) / 1e6).fixed(1)) ms)\n"
        }
        if let b = s.lastBackup {
            out += "scheduled backups: \(b.runs) taken, \(b.failures) failed; last by pid \(b.pid) " +
                (b.ok ? "to \(b.destination ?? "?")" : "FAILED: \(b.error ?? "")") + "\n"
        }
        if let t = s.transactions {
            out += "transactions: \(t.commits) committed, \(t.conflicts) conflicts, \(t.retries) retried, \(t.failures) gave up\n"
        }
        let header = ["LOCK", "LEVEL", "STATE", "HOLDER", "READERS", "HELD FOR", "WAITERS", "ACQUIRED", "SHARED", "CONTENDED", "TIMEOUTS", "OWNER DEATHS"]
        var rows = [header]
        for lock in s.locks {
            rows.append([
                lock.name, lock.level.description,
                lock.state.rawValue + (lock.ownerDiedPending ? " (owner died)" : "") + (lock.damaged ? " (damaged: see pmll check)" : ""),
                lock.holder.map { "\($0.pid) \($0.commandName)" } ?? "-",
                Self.readers(lock),
                lock.heldForSeconds.map { $0.fixed(1) + "s" } ?? "-",
                "\(lock.waiters)", "\(lock.acquisitions)", "\(lock.shared.acquisitions)",
                "\(lock.contended + lock.shared.contended)", "\(lock.timeouts)", "\(lock.ownerDeaths)",
            ])
        }
        out += s.locks.isEmpty ? "no locks\n" : TableText.render(rows) + "\n"
        for lock in s.locks where lock.shared.readerDeaths > 0 || lock.shared.drains > 0 {
            let st = lock.shared
            out += "lock \(lock.name): \(st.readerDeaths) shared hold(s) of dead readers discounted; writers waited for readers " +
                "\(st.drains) time(s), longest \((Double(st.drainMaxNanoseconds) / 1e6).fixed(1)) ms\n"
        }
        for head in s.damagedQueueHeads {
            out += "queue head \(head) is damaged: its queue is not shown (see pmll check)\n"
        }
        if !s.queues.isEmpty {
            var queueRows = [["QUEUE", "PERSISTENT", "PENDING", "COMPLETED", "FAILED", "RETRIED", "ABANDONED", "RECOVERED", "MEAN WAIT", "MEAN RUN"]]
            for q in s.queues {
                queueRows.append([q.name, q.persistent ? "yes" : "no", "\(q.pending)", "\(q.completed)", "\(q.failed)", "\(q.retried)",
                                  "\(q.abandoned)", "\(q.recovered)", (Double(q.meanWaitNanoseconds) / 1e6).fixed(2) + "ms",
                                  (Double(q.meanRunNanoseconds) / 1e6).fixed(2) + "ms"])
            }
            out += "\n" + TableText.render(queueRows) + "\n"
        }
        return String(out.dropLast())
    }

    /// Live shared holders: their pids and commands when few, else how many.
    static func readers(_ lock: LockStatus) -> String {
        let dead = lock.sharedHolds - lock.readers.reduce(0) { $0 + $1.holds }
        var text = lock.readers.isEmpty ? "-" : lock.readers.count <= 3
            ? lock.readers.map { "\($0.pid) \($0.commandName)" + ($0.holds > 1 ? " x\($0.holds)" : "") }.joined(separator: ", ")
            : "\(lock.readers.count) processes"
        if dead > 0 { text += " (+\(dead) dead)" }
        return text
    }
}
