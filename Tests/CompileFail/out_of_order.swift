// expect-error: conform to 'MayAcquireRegistry'
import PMLL

func bad(_ pool: Pool) throws {
    let registry = try pool.lock("registry", Registry.self)
    let package = try pool.lock("pkg", Package.self)
    try pool.withLockContext { root in
        try root.withLock(package: package) { p in
            try p.withLock(registry: registry) { _ in }
        }
    }
}
