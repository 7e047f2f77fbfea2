// expect-error: missing reinitialization of inout parameter
import PMLL

func bad(_ pool: Pool) throws {
    let package = try pool.lock("pkg", Package.self)
    try pool.withLockContext { root in
        try root.withLock(package: package) { p in
            let copy = p
            _ = copy
        }
    }
}
