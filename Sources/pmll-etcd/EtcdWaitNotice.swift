import Foundation
import PMLLEtcd

/// While a command waits for a lock or a queue's turn: after half a second, then every 10 s,
/// one line on stderr saying what it waits for, as `pmll` says it for a local pool. Each line
/// costs a read or two of the etcd cluster; nothing is read before half a second.
final class EtcdWaitNotice: Sendable {
    private let task: Task<Void, Never>

    private init(_ describe: @escaping @Sendable () async -> String?) {
        task = Task {
            var pause: Duration = .milliseconds(500)
            while true {
                do { try await Task.sleep(for: pause) } catch { return }
                pause = .seconds(10)
                // Stopped while the read was under way: the wait is over, say nothing.
                guard let line = await describe(), !Task.isCancelled else { continue }
                FileHandle.standardError.write(Data((line + "\n").utf8))
            }
        }
    }

    /// Ends the notices (the lock or the turn is ours, or the wait ended otherwise).
    func stop() { task.cancel() }

    /// Names the holder of lock `name` (or its shared holders).
    static func lock(_ pool: EtcdPool, _ name: String) -> EtcdWaitNotice {
        EtcdWaitNotice {
            guard let status = try? await pool.lockStatus(named: name).first else { return nil }
            if let holder = status.holder, !holder.isThisProcess {
                return "pmll: waiting for lock '\(name)' held by \(describe(holder.pid, holder.command, holder.host))"
            }
            let readers = status.readers.filter { !$0.isThisProcess }
            guard !readers.isEmpty else { return nil }
            let names = readers.prefix(3).map { describe($0.pid, $0.command, $0.host) }.joined(separator: ", ") + (readers.count > 3 ? ", ..." : "")
            return "pmll: waiting for lock '\(name)' held shared by \(names)"
        }
    }

    /// Names the operation that has queue `name`'s turn (the newest running record).
    static func queue(_ queue: EtcdQueue, _ name: String) -> EtcdWaitNotice {
        EtcdWaitNotice {
            guard let records = try? await queue.records(limit: 16),
                  let ahead = records.last(where: { $0.state == .running && !$0.isThisProcess }) else { return nil }
            return "pmll: waiting in queue '\(name)' behind ticket \(ahead.ticket) '\(ahead.kind)' of \(describe(ahead.pid, ahead.command, ahead.host)), running"
        }
    }

    private static func describe(_ pid: Int32, _ command: String, _ host: String) -> String {
        "pid \(pid) (\(command) on \(host))"
    }
}
