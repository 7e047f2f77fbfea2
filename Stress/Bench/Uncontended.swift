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
        let shared = try SharedFile(directory + "/peers.shm", create: true)
        let mutex = shared.base
        precondition(peers_robust_init(mutex) == 0)
        let lockFile = open(directory + "/peers.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        defer { close(lockFile) }

        func median(_ body: () throws -> Int64) rethrows -> Double {
            var samples: [Double] = []
            for _ in 0..<rounds { samples.append(Double(try body()) / Double(iterations)) }
            return samples.sorted()[rounds / 2]
        }
        func timed(_ body: () throws -> Void) rethrows -> Int64 {
            let start = monotonicNanoseconds()
            try body()
            return monotonicNanoseconds() - start
        }
        // Warm up page tables and caches.
        for _ in 0..<10_000 { try untyped.withLock { _ in } }

        var rows: [Row] = []
        let word = (shared.base + 128).assumingMemoryBound(to: UInt32.self)
        rows.append(Row(name: "bare CAS + store (floor)", nanosecondsPerPair: median { Int64(peers_cas_pairs(word, UInt64(iterations))) }))
        rows.append(Row(name: "pmll untyped (LockHandle.withLock)", nanosecondsPerPair: try median {
            try timed { for _ in 0..<iterations { try untyped.withLock { _ in } } }
        }))
        rows.append(Row(name: "pmll typed (LockContext.withLock)", nanosecondsPerPair: try median {
            try timed {
                try pool.withLockContext { root in
                    for _ in 0..<iterations { try root.withLock(package: typed) { _ in } }
                }
            }
        }))
        rows.append(Row(name: "pmll shared (LockHandle.withSharedLock)", nanosecondsPerPair: try median {
            try timed { for _ in 0..<iterations { try untyped.withSharedLock { _ in } } }
        }))
        let rwlock = shared.base + 1024
        precondition(peers_rwlock_init(rwlock) == 0)
        rows.append(Row(name: "glibc pshared rwlock rdlock+unlock", nanosecondsPerPair: median {
            timed { for _ in 0..<iterations { _ = peers_rwlock_rdlock(rwlock); _ = peers_rwlock_unlock(rwlock) } }
        }))
        rows.append(Row(name: "glibc robust pshared mutex", nanosecondsPerPair: median {
            timed { for _ in 0..<iterations { _ = peers_robust_lock(mutex); _ = peers_robust_unlock(mutex) } }
        }))
        let slow = max(1, iterations / 50)
        rows.append(Row(name: "flock(2)", nanosecondsPerPair: median {
            timed { for _ in 0..<slow { _ = peers_flock_pair(lockFile) } } * Int64(iterations / slow)
        }))
        rows.append(Row(name: "flock(2) LOCK_SH", nanosecondsPerPair: median {
            timed { for _ in 0..<slow { _ = peers_flock(lockFile, peers_lock_sh()); _ = peers_flock(lockFile, peers_lock_un()) } } * Int64(iterations / slow)
        }))
        rows.append(Row(name: "fcntl OFD lock", nanosecondsPerPair: median {
            timed { for _ in 0..<slow { _ = peers_ofd_pair(lockFile) } } * Int64(iterations / slow)
        }))
        return rows
    }
}
