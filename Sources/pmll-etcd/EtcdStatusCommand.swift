import ArgumentParser
import Foundation
import PMLLCore
import PMLLEtcd
import PMLLQueues

struct EtcdStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the etcd pool's locks (holders, fencing tokens, lease time left, waiters, unrepaired deaths) and queues.")
    @OptionGroup var poolArguments: EtcdPoolArguments
    @Flag(help: "JSON output.") var json = false

    func run() async throws {
        let pool = try await poolArguments.open()
        let locks: [EtcdLockStatus], queues: [QueueStats]
        do { (locks, queues) = (try await pool.lockStatus(), try await pool.queues()) } catch {
            await pool.close()
            throw error
        }
        await pool.close()
        if json {
            let encoder = EtcdJSON.encoder
            struct Report: Encodable { var pool: String; var locks: [EtcdLockStatus]; var queues: [QueueStats] }
            FileHandle.standardOutput.write(try encoder.encode(Report(pool: pool.address, locks: locks, queues: queues)) + Data("\n".utf8))
            return
        }
        print("pool: \(pool.address) (etcd)")
        printLocks(locks)
        print("queues: \(queues.count)")
        for q in queues {
            print("  \(q.name): \(q.pending) pending, \(q.completed) completed, \(q.failed) failed, \(q.retried) retried, \(q.abandoned) abandoned, \(q.recovered) recovered")
        }
    }

    private func printLocks(_ locks: [EtcdLockStatus]) {
        print("locks: \(locks.count)")
        if locks.isEmpty { return }
        print("NAME".padding(toLength: 24, withPad: " ", startingAt: 0) + " STATE     TOKEN      HOLDER                          LEASE  WAITERS")
        for lock in locks {
            let state = lock.holder != nil ? "held" : lock.readers.isEmpty ? "free" : "shared"
            let holder = lock.holder.map { "pid \($0.pid) (\($0.command) on \($0.host))" }
                ?? (lock.readers.isEmpty ? "-" : "\(lock.readers.count) reader(s): pids " + lock.readers.map { String($0.pid) }.joined(separator: ","))
            let token = lock.holder.map { String($0.fencingToken) } ?? "-"
            let lease = lock.holder.map { $0.leaseSecondsLeft >= 0 ? "\($0.leaseSecondsLeft)s" : "?" } ?? "-"
            print(lock.name.padding(toLength: 24, withPad: " ", startingAt: 0) + " " + state.padding(toLength: 9, withPad: " ", startingAt: 0)
                  + " " + token.padding(toLength: 10, withPad: " ", startingAt: 0) + " " + holder.padding(toLength: 31, withPad: " ", startingAt: 0)
                  + " " + lease.padding(toLength: 6, withPad: " ", startingAt: 0) + " " + String(lock.waiters))
            if let death = lock.unrepairedDeath {
                print("  last holder pid \(death.pid) (\(death.command) on \(death.host), token \(death.fencingToken)) died holding it or released it inconsistent; the next holder is told")
            }
        }
    }
}
