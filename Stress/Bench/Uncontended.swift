import CPMLLPeers
import Foundation
import PMLL
import PMLLStressSupport

/// Uncontended lock+unlock pairs in one process: PMLL's typed and untyped Swift API
/// against the bare CAS floor, glibc's robust process-shared mutex, flock and OFD locks,
/// all on files in the same directory.
enum Uncontended {
    struct Row: Codable {
        let name: String
        let nanosecondsPerPair: Double
    }

    static func run(directory: String, iterations: Int, rounds: Int = 5) throws -> [Row] {
        let pool = try Pool.open(path: directory + "/bench.pool")
        let untyped = try pool.lock(named: "bench/uncontended", level: .package)
        let typed = try pool.lock("bench/uncontended", Package.self)
        // Its own lock: shared holds here and exclusive ones above would revoke the reader bias.
        let sharedLock = try pool.lock(named: "bench/uncontended-shared", level: .package)
        let shared = try SharedFile(directory + "/peers.shm", create: true)
        let mutex = shared.base
        precondition(peers_robust_init(mutex) == 0)
        let rwlock = shared.base + 1024
        precondition(peers_rwlock_init(rwlock) == 0)
        let lockFile = open(directory + "/peers.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        defer { close(lockFile) }

        func timed(_ body: () throws -> Void) rethrows -> Int64 {
            let start = monotonicNanoseconds()
            try body()
            return monotonicNanoseconds() - start
        }
        // Warm up page tables and caches.
        for _ in 0..<10_000 { try untyped.withLock { _ in } }
        for _ in 0..<10_000 { try sharedLock.withSharedLock { _ in } }

        let word = (shared.base + 128).assumingMemoryBound(to: UInt32.self)
        let slow = max(1, iterations / 50)
        // Nanoseconds for `iterations` pairs, one round.
        let parts: [(String, () throws -> Int64)] = [
            ("bare CAS + store (floor)", { Int64(peers_cas_pairs(word, UInt64(iterations))) }),
            ("pmll untyped (LockHandle.withLock)", { try timed { for _ in 0..<iterations { try untyped.withLock { _ in } } } }),
            ("pmll typed (LockContext.withLock)", {
                try timed {
                    try pool.withLockContext { root in
                        for _ in 0..<iterations { try root.withLock(package: typed) { _ in } }
                    }
                }
            }),
            ("pmll shared (LockHandle.withSharedLock)", { try timed { for _ in 0..<iterations { try sharedLock.withSharedLock { _ in } } } }),
            ("glibc pshared rwlock rdlock+unlock", {
                timed { for _ in 0..<iterations { _ = peers_rwlock_rdlock(rwlock); _ = peers_rwlock_unlock(rwlock) } }
            }),
            ("glibc robust pshared mutex", { timed { for _ in 0..<iterations { _ = peers_robust_lock(mutex); _ = peers_robust_unlock(mutex) } } }),
            ("flock(2)", { timed { for _ in 0..<slow { _ = peers_flock_pair(lockFile) } } * Int64(iterations / slow) }),
            ("flock(2) LOCK_SH", {
                timed { for _ in 0..<slow { _ = peers_flock(lockFile, peers_lock_sh()); _ = peers_flock(lockFile, peers_lock_un()) } } * Int64(iterations / slow)
            }),
            ("fcntl OFD lock", { timed { for _ in 0..<slow { _ = peers_ofd_pair(lockFile) } } * Int64(iterations / slow) }),
        ]
        // Rounds interleaved across the rows, so that a slower minute of this shared machine
        // falls on PMLL and its peers alike instead of on whichever row ran then.
        var samples = Array(repeating: [Double](), count: parts.count)
        for _ in 0..<rounds {
            for (i, part) in parts.enumerated() { samples[i].append(Double(try part.1()) / Double(iterations)) }
        }
        return zip(parts, samples).map { part, values in
            Row(name: part.0, nanosecondsPerPair: values.sorted()[rounds / 2])
        }
    }
}
