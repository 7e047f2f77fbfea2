import CPMLL
import CPMLLPeers
import Foundation
import Histogram
import PMLL
import PMLLStressSupport

/// SIGKILL of a holder until a waiting process owns the lock (and knows the owner died).
enum Takeover {
    struct Row: Codable {
        let kind: String
        let rounds: Int
        let p50Microseconds: Double
        let p99Microseconds: Double
        let maxMicroseconds: Double
        let ownerDeathReported: Int
    }

    static func run(kind: String, rounds: Int, directory: String) throws -> Row {
        let shared = try SharedFile(directory + "/takeover-\(kind).shm", create: true)
        if kind == "pthread" { precondition(peers_robust_init(shared.base) == 0) }
        _ = try Pool.open(path: directory + "/bench.pool")
        var histogram = Histogram<UInt64>(numberOfSignificantValueDigits: .three)
        var reported = 0
        for _ in 0..<rounds {
            if kind == "exit" {
                // The floor of any takeover that waits for the kernel to release the holder's
                // files (OFD byte, pidfd): the pmll holder's own exit, watched by a pidfd.
                let holder = try BenchChild(["takeover-child", "--kind", "pmll", "--directory", directory, "--role", "holder"])
                guard holder.readLine() == "held" else { throw ToolError("holder failed") }
                let pidfd = pmll_pidfd_open(holder.pid)   // our unreaped child: its PID cannot be reused
                let killedAt = monotonicNanoseconds()
                kill(holder.pid, SIGKILL)
                var poller = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
                _ = poll(&poller, 1, 5000)
                _ = histogram.record(UInt64(max(0, monotonicNanoseconds() - killedAt)))
                close(pidfd)
                holder.process.waitUntilExit()
                reported += 1
                continue
            }
            let holder = try BenchChild(["takeover-child", "--kind", kind, "--directory", directory, "--role", "holder"])
            guard holder.readLine() == "held" else { throw ToolError("holder failed") }
            let waiter = try BenchChild(["takeover-child", "--kind", kind, "--directory", directory, "--role", "waiter"])
            guard waiter.readLine() == "waiting" else { throw ToolError("waiter failed") }
            usleep(20_000)   // let the waiter go to sleep in the kernel
            let killedAt = monotonicNanoseconds()
            kill(holder.pid, SIGKILL)
            guard let line = waiter.readLine(), let parts = Optional(line.split(separator: " ")), parts.count == 2,
                  let acquiredAt = Int64(parts[0]) else { throw ToolError("waiter gave no time") }
            if parts[1] == "died" { reported += 1 }
            _ = histogram.record(UInt64(max(0, acquiredAt - killedAt)))
            holder.process.waitUntilExit()
            waiter.process.waitUntilExit()
        }
        return Row(kind: kind, rounds: rounds,
                   p50Microseconds: Double(histogram.valueAtPercentile(50)) / 1000,
                   p99Microseconds: Double(histogram.valueAtPercentile(99)) / 1000,
                   maxMicroseconds: Double(histogram.max) / 1000,
                   ownerDeathReported: reported)
    }

    static func child(kind: String, directory: String, role: String) throws {
        let shared = try SharedFile(directory + "/takeover-\(kind).shm", create: false)
        if kind == "pmll" {
            let lock = try Pool.open(path: directory + "/bench.pool").lock(named: "bench/takeover", level: .package)
            if role == "holder" {
                try lock.withLock { _ in
                    sayLine("held")
                    sleep(60)
                }
            } else {
                sayLine("waiting")
                let died = try lock.withLock { grant in
                    let now = monotonicNanoseconds()
                    return (now, grant.previousOwnerDeath != nil)
                }
                sayLine("\(died.0) \(died.1 ? "died" : "clean")")
            }
        } else {
            if role == "holder" {
                _ = peers_robust_lock(shared.base)
                sayLine("held")
                sleep(60)
            } else {
                sayLine("waiting")
                let rc = peers_robust_lock(shared.base)
                let now = monotonicNanoseconds()
                _ = peers_robust_unlock(shared.base)
                sayLine("\(now) \(rc == 1 ? "died" : "clean")")
            }
        }
    }
}
