// expect-error: escaping closure captures 'inout' parameter
import PMLL

var later: (() -> Void)?

func bad(_ pool: Pool) throws {
    let package = try pool.lock("pkg", Package.self)
    try pool.withLockContext { root in
        try root.withLock(package: package) { p in
            later = { p.markInconsistent() }
        }
    }
}
