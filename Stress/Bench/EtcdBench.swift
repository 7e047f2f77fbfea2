import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import PMLLCore
import PMLLEtcd
import PMLLStressSupport

/// The etcd backend on a loopback cluster this command starts, against etcd's own lock
/// service (`/v3/lock/lock` + `/v3/lock/unlock` through the same JSON gateway and the same
/// HTTP client) and a bare `/v3/kv/put` (the gateway's floor), in interleaved rounds; then
/// takeover after a holder's SIGKILL against the lease TTL.
struct EtcdBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "etcd", abstract: "etcd backend: lock+unlock and fenced commits vs etcd's v3lock service; takeover vs TTL.")

    @Option(help: "Cluster members (started on loopback by this command).") var members = 3
    @Option var rounds = 300
    @Option(help: "Holder deaths to time.") var takeovers = 5
    @Option(help: "Lease TTL (s) for the takeover part.") var ttl = 2
    @Option(help: "Clients for the contended part (each its own participant / lease).") var clients = 4
    @Option(help: "Lock+unlock per client in each contended run.") var contendedOps = 50
    @Flag var json = false

    struct Row: Codable {
        var operation: String
        var p50Milliseconds: Double
        var p90Milliseconds: Double
        var p99Milliseconds: Double
    }

    func run() async throws {
        let cluster = try EtcdCluster(members: members)
        defer { cluster.stop() }
        let pool = try await EtcdPool.open(url: cluster.address("bench"))
        let lock = try await pool.lock(named: "u", level: .package)
        let queue = try pool.queue(named: "bq", keepRecords: 100)
        let endpoint = "http://" + cluster.members[0].url
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        let lease = try await Self.post(client, endpoint + "/v3/lease/grant", #"{"TTL":"60"}"#)["ID"] as? String ?? "0"
        let name = Data("v3/u".utf8).base64EncodedString()

        var samples: [String: [Double]] = [:]
        func time(_ label: String, _ body: () async throws -> Void) async rethrows {
            let start = ContinuousClock.now
            try await body()
            let d = start.duration(to: .now)
            samples[label, default: []].append(Double(d.components.seconds) * 1e3 + Double(d.components.attoseconds) / 1e15)
        }
        for round in -20..<rounds {
            let keep = round >= 0
            try await time("pmll lock+unlock") { try await lock.withLock { _ in } }
            try await time("etcd v3lock lock+unlock") {
                let key = try await Self.post(client, endpoint + "/v3/lock/lock", #"{"name":"\#(name)","lease":"\#(lease)"}"#)["key"] as? String ?? ""
                _ = try await Self.post(client, endpoint + "/v3/lock/unlock", #"{"key":"\#(key)"}"#)
            }
            try await time("pmll lock+fenced commit+unlock") {
                try await lock.withLock { grant in
                    try await pool.transaction(fencedBy: [grant.fence]) { try $0.set("k", String(round)) }
                }
            }
            try await time("pmll shared lock+unlock") { try await lock.withSharedLock { _ in } }
            try await time("pmll queue operation") { try await queue.execute(kind: "bench") { _ in } }
            try await time("etcd v3lock lock+2 puts+unlock (queue peer)") {
                let key = try await Self.post(client, endpoint + "/v3/lock/lock", #"{"name":"\#(name)","lease":"\#(lease)"}"#)["key"] as? String ?? ""
                for _ in 0..<2 { _ = try await Self.post(client, endpoint + "/v3/kv/put", #"{"key":"\#(Data("r".utf8).base64EncodedString())","value":"eA=="}"#) }
                _ = try await Self.post(client, endpoint + "/v3/lock/unlock", #"{"key":"\#(key)"}"#)
            }
            try await time("etcd put (gateway floor)") {
                _ = try await Self.post(client, endpoint + "/v3/kv/put", #"{"key":"\#(Data("p".utf8).base64EncodedString())","value":"eA=="}"#)
            }
            if !keep { samples.removeAll() }
        }
        var rows = samples.keys.sorted().map { label -> Row in
            let s = samples[label]!.sorted()
            return Row(operation: label, p50Milliseconds: s[s.count / 2], p90Milliseconds: s[s.count * 9 / 10], p99Milliseconds: s[min(s.count - 1, s.count * 99 / 100)])
        }

        // Contended: `clients` participants (own pools / leases) take one lock in turn; the
        // same with v3lock; alternated, two runs each, throughput in lock+unlock per second.
        var contended: [String: [Double]] = [:]
        var contenders: [EtcdPool] = []
        for _ in 0..<clients { contenders.append(try await EtcdPool.open(url: cluster.address("contended"))) }
        var leases: [String] = []
        for _ in 0..<clients { leases.append(try await Self.post(client, endpoint + "/v3/lease/grant", #"{"TTL":"60"}"#)["ID"] as? String ?? "0") }
        let ops = contendedOps
        for _ in 0..<2 {
            let start = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for pool in contenders {
                    group.addTask {
                        let l = try await pool.lock(named: "c", level: .package)
                        for _ in 0..<ops { try await l.withLock { _ in } }
                    }
                }
                try await group.waitForAll()
            }
            contended["pmll", default: []].append(Double(clients * ops) / Self.seconds(start.duration(to: .now)))
            let v3start = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for lease in leases {
                    group.addTask {
                        let cname = Data("v3/c".utf8).base64EncodedString()
                        for _ in 0..<ops {
                            let key = try await Self.post(client, endpoint + "/v3/lock/lock", #"{"name":"\#(cname)","lease":"\#(lease)"}"#)["key"] as? String ?? ""
                            _ = try await Self.post(client, endpoint + "/v3/lock/unlock", #"{"key":"\#(key)"}"#)
                        }
                    }
                }
                try await group.waitForAll()
            }
            contended["v3lock", default: []].append(Double(clients * ops) / Self.seconds(v3start.duration(to: .now)))
        }
        for pool in contenders { await pool.close() }

        // Takeover: a `pmll lock` holder (another process) SIGKILLed; this process waits.
        let pmll = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/pmll"
        let address = cluster.address("takeover", ttl: ttl)
        let waiterPool = try await EtcdPool.open(url: address)
        let taken = try await waiterPool.lock(named: "t", level: .package)
        var takeoverTimes: [Double] = []
        for _ in 0..<takeovers {
            let holder = Process()
            holder.executableURL = URL(fileURLWithPath: pmll)
            holder.arguments = ["lock", "--pool", address, "t", "--", "sleep", "600"]
            holder.standardError = FileHandle.nullDevice
            try holder.run()
            while try await taken.currentHolder()?.pid != holder.processIdentifier { try await Task.sleep(for: .milliseconds(20)) }
            // Just after a keep-alive, as a process dies at any moment: sample the phase.
            try await Task.sleep(for: .milliseconds(Int64.random(in: 0..<Int64(ttl * 1000 / 3))))
            let command = ProcessTree.descendants(of: holder.processIdentifier)   // its `sleep 600`
            let killed = ContinuousClock.now
            kill(holder.processIdentifier, SIGKILL)
            try await taken.withLock { _ in }
            let d = killed.duration(to: .now)
            takeoverTimes.append(Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
            // Reaped here: Process.waitUntilExit spins a run loop that an async context
            // does not run, and never returns.
            var status: Int32 = 0
            _ = waitpid(holder.processIdentifier, &status, 0)
            for pid in command { kill(pid, SIGKILL) }
        }
        takeoverTimes.sort()
        await waiterPool.close()
        await pool.close()
        try await client.shutdown()

        if json {
            struct Report: Encodable {
                var members: Int; var rounds: Int; var rows: [Row]; var ttlSeconds: Int; var takeoverSeconds: [Double]
                var clients: Int; var contendedOpsPerSecond: [String: [Double]]
            }
            let data = try JSONEncoder().encode(Report(members: members, rounds: rounds, rows: rows, ttlSeconds: ttl, takeoverSeconds: takeoverTimes,
                                                       clients: clients, contendedOpsPerSecond: contended))
            print(String(decoding: data, as: UTF8.self))
            return
        }
        rows.sort { $0.operation < $1.operation }
        print("etcd \(members) member(s) on loopback, \(rounds) interleaved rounds (ms)")
        print("operation".padding(toLength: 46, withPad: " ", startingAt: 0) + "     p50      p90      p99")
        for row in rows {
            print(row.operation.padding(toLength: 46, withPad: " ", startingAt: 0)
                  + String(format: " %8.3f %8.3f %8.3f", row.p50Milliseconds, row.p90Milliseconds, row.p99Milliseconds))
        }
        if let pmllRow = rows.first(where: { $0.operation == "pmll lock+unlock" }), let v3 = rows.first(where: { $0.operation == "etcd v3lock lock+unlock" }) {
            print(String(format: "ratio pmll / v3lock (p50): %.2f", pmllRow.p50Milliseconds / v3.p50Milliseconds))
        }
        if let q = rows.first(where: { $0.operation == "pmll queue operation" }),
           let peer = rows.first(where: { $0.operation == "etcd v3lock lock+2 puts+unlock (queue peer)" }) {
            print(String(format: "ratio pmll queue operation / v3lock+2 puts (p50): %.2f", q.p50Milliseconds / peer.p50Milliseconds))
        }
        if let p = contended["pmll"], let v = contended["v3lock"] {
            print(String(format: "contended, %d clients x %d lock+unlock: pmll %@ /s, v3lock %@ /s; ratio (mean of runs) %.2f", clients, ops,
                         p.map { String(format: "%.0f", $0) }.joined(separator: ", "), v.map { String(format: "%.0f", $0) }.joined(separator: ", "),
                         (p.reduce(0, +) / Double(p.count)) / (v.reduce(0, +) / Double(v.count))))
        }
        if !takeoverTimes.isEmpty {
            print(String(format: "takeover after SIGKILL, TTL %d s: median %.2f s, range %.2f–%.2f s (%d deaths)", ttl,
                         takeoverTimes[takeoverTimes.count / 2], takeoverTimes.first!, takeoverTimes.last!, takeoverTimes.count))
        }
    }

    static func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }

    static func post(_ client: HTTPClient, _ url: String, _ body: String) async throws -> [String: Any] {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.body = .bytes(ByteBuffer(string: body))
        let response = try await client.execute(request, timeout: .seconds(10))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        return (try JSONSerialization.jsonObject(with: Data(bytes.readableBytesView))) as? [String: Any] ?? [:]
    }
}
