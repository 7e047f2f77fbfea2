// expect-error: overlapping accesses to 'root'
import PMLL

func bad(_ pool: Pool) throws {
    let registry = try pool.lock("registry", Registry.self)
    let package = try pool.lock("pkg", Package.self)
    let other = try pool.lock("other", Registry.self)
    try pool.withLockContext { root in
        try root.withLock(package: package) { p in
            try root.withLock(registry: other) { _ in }   // the outer context is not usable in here
        }
        _ = registry
    }
}
