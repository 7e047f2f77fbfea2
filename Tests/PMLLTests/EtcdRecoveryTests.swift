import Foundation
import PMLLCore
@testable import PMLLEtcd
import PMLLQueues
import PMLLStressSupport
import Testing

/// Recovery on an etcd pool run from several processes at once.
@Suite("etcd backend: concurrent recoveries")
struct EtcdRecoveryTests {
    @Test("two recoveries at once run each abandoned operation's handler once, as on a local pool")
    func concurrentRecoveriesRunEachHandlerOnce() async throws {
        try await onEtcdThread {
            let cluster = try EtcdCluster()
            defer { cluster.stop() }
            let address = cluster.address("recover2", ttl: 2)
            let queues = ["a", "b", "c"]
            var stuck: [Task<Void, any Error>] = []
            for queue in queues { stuck.append(try await EtcdLostAnswerTests.dyingOperation(address, queue: queue, kind: "install")) }
            defer { for task in stuck { task.cancel() } }
            let first = try await EtcdPool.open(url: address), second = try await EtcdPool.open(url: address)
            // Once the dead participants' leases are gone, a dry run finds all three.
            try await waitUntil { try await first.recover(handlers: [:], dryRun: true).items.count == queues.count }
            // Marked abandoned (no handler yet), as the next operation of each queue would: the
            // mark itself is compared on the record, so only records already abandoned can be
            // taken up by two recoveries at once.
            #expect(try await first.recover(handlers: [:]).unhandled.count == queues.count)
            let ran = TicketLog()
            // Slow enough that the two recoveries overlap whatever order they start in.
            let handler: EtcdRecoveryHandler = { record in
                ran.append(UInt64(record.ticket))
                try await Task.sleep(for: .milliseconds(300))
            }
            async let one = first.recover(handlers: ["install": handler])
            async let two = second.recover(handlers: ["install": handler])
            let reports = try await [one, two]
            #expect(ran.values.count == queues.count, "handlers ran \(ran.values.count) times for \(queues.count) operations")
            #expect(reports.map(\.recovered.count).reduce(0, +) == queues.count)
            #expect(try await first.recover(handlers: ["install": handler]).items.isEmpty)
            await first.close()
            await second.close()
        }
    }
}
