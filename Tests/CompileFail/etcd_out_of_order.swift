// expect-error: conform to 'MayAcquireRegistry'
import PMLLEtcd
import PMLLLocks

func bad(_ pool: EtcdPool) async throws {
    let registry = try await pool.lock("registry", Registry.self)
    let package = try await pool.lock("pkg", Package.self)
    try await pool.withLockContext { root in
        try await root.withLock(package: package) { p in
            try await p.withLock(registry: registry) { _ in }
        }
    }
}
