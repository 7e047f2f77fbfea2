import Foundation
public import PMLLCore

/// One lock of an etcd pool as `pmll status` shows it.
public struct EtcdLockStatus: Sendable, Codable {
    public struct Holder: Sendable, Codable {
        public var pid: Int32
        public var host: String
        public var command: String
        public var fencingToken: Int64
        public var heldSinceNanoseconds: Int64
        /// Seconds left before the holder's lease expires if it is not renewed (-1: unknown).
        public var leaseSecondsLeft: Int64
        /// Whether this process is the holder (its pid, on this host).
        public var isThisProcess: Bool { ParticipantIdentity.isCurrent(pid: pid, host: host) }
    }
    public var name: String
    public var level: UInt32?
    /// The exclusive holder.
    public var holder: Holder?
    /// The shared holders (readers before the first queued writer).
    public var readers: [Holder] = []
    public var waiters: Int
    /// The last holder died (or released marked inconsistent) and nobody has held the lock
    /// since: the next holder will be told.
    public var unrepairedDeath: Holder?
}

struct LeaseTimeToLive: Decodable, Sendable { var TTL: EtcdInt? }

extension EtcdPool {
    /// Every lock with a holder, waiters or an unrepaired death, sorted by name; or only lock
    /// `name` (nothing if it has none of those): three reads of its own keys, not of every
    /// lock's, for a waiter saying who it waits for.
    public func lockStatus(named name: String? = nil) async throws(PMLLError) -> [EtcdLockStatus] {
        let root = keys.lockRoot
        let first = name.map(keys.waiters) ?? root
        let all = try await gateway.call("/v3/kv/range", RangeRequest(key: EtcdBytes(first), range_end: EtcdBytes(prefixEnd(first)),
                                                                       sort_order: "ASCEND", sort_target: "CREATE"), as: RangeResponse.self)
        var byName: [String: [KeyValue]] = [:]
        for kv in all.all {
            let rest = kv.key.bytes.dropFirst(root.count)
            guard let slash = rest.lastIndex(of: UInt8(ascii: "/")) else { continue }
            byName[EtcdKeys.unescape(Substring(decoding: rest[..<slash], as: UTF8.self)), default: []].append(kv)
        }
        let heldRoot = keys.heldRoot
        // One lock: its own key exactly (a range over its name would take "ab" for "a").
        let heldRecords = try await gateway.call("/v3/kv/range", name.map { RangeRequest(key: EtcdBytes(keys.held($0))) }
                                                 ?? RangeRequest(key: EtcdBytes(heldRoot), range_end: EtcdBytes(prefixEnd(heldRoot))), as: RangeResponse.self)
        var held: [String: HolderRecord] = [:]
        for kv in heldRecords.all {
            let name = EtcdKeys.unescape(Substring(decoding: kv.key.bytes.dropFirst(heldRoot.count), as: UTF8.self))
            held[name] = HolderRecord.decode(kv)
        }
        // Every recorded level in one read (a status of 1,000 locks is not 1,000 round trips).
        let levelRoot = keys.levelRoot
        let levelRecords = try await gateway.call("/v3/kv/range", name.map { RangeRequest(key: EtcdBytes(keys.level($0))) }
                                                  ?? RangeRequest(key: EtcdBytes(levelRoot), range_end: EtcdBytes(prefixEnd(levelRoot))), as: RangeResponse.self)
        var levels: [String: UInt32] = [:]
        for kv in levelRecords.all {
            levels[EtcdKeys.unescape(Substring(decoding: kv.key.bytes.dropFirst(levelRoot.count), as: UTF8.self))] = UInt32(String(decoding: kv.valueBytes, as: UTF8.self))
        }
        var result: [EtcdLockStatus] = []
        for name in Set(byName.keys).union(held.keys).sorted() {
            let waiting = byName[name] ?? []
            // Keys sorted by create revision: an exclusive key first holds the lock; else the
            // shared keys up to the first exclusive one hold it together.
            let isShared = { (kv: KeyValue) -> Bool in kv.key.bytes.split(separator: UInt8(ascii: "/")).last?.first == UInt8(ascii: "r") }
            let holding = waiting.first.map { isShared($0) ? Array(waiting.prefix(while: isShared)) : [$0] } ?? []
            var status = EtcdLockStatus(name: name, level: nil, holder: nil, waiters: waiting.count - holding.count, unrepairedDeath: nil)
            for kv in holding {
                guard let record = try? JSONDecoder().decode(HolderRecord.self, from: Data(kv.valueBytes)) else { continue }
                var left: Int64 = -1
                if let lease = kv.lease?.value {
                    left = (try? await gateway.call("/v3/lease/timetolive", LeaseIDRequest(ID: EtcdInt(lease)), as: LeaseTimeToLive.self))?.TTL?.value ?? -1
                }
                let holder = EtcdLockStatus.Holder(pid: record.pid, host: record.host, command: record.command, fencingToken: kv.createRevision,
                                                   heldSinceNanoseconds: record.since, leaseSecondsLeft: left)
                if isShared(kv) { status.readers.append(holder) } else { status.holder = holder }
            }
            if let record = held[name], record.token != status.holder?.fencingToken || record.inconsistent == true {
                status.unrepairedDeath = .init(pid: record.pid, host: record.host, command: record.command, fencingToken: record.token ?? 0,
                                               heldSinceNanoseconds: record.since, leaseSecondsLeft: -1)
            }
            status.level = levels[name]
            result.append(status)
        }
        return result
    }
}
