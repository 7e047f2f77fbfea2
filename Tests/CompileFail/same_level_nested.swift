// expect-error: conform to 'MayAcquirePackage'
import PMLL

func bad(_ pool: Pool) throws {
    let a = try pool.lock("a", Package.self)
    let b = try pool.lock("b", Package.self)
    try pool.withLockContext { root in
        try root.withLock(package: a) { p in
            try p.withLock(package: b) { _ in }   // two packages: only through withLocks([a, b])
        }
    }
}
